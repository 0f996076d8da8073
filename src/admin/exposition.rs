//! The `/metrics` page. Series that mirror live state (backend up,
//! active connections, data centers, certificate expiry) are rendered from
//! the current snapshot at scrape time, so whatever a reload removes
//! simply stops appearing.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::accept::Slots;
use crate::config::Protocol;
use crate::health::State;
use crate::metrics::{
    self, BACKEND_ACTIVE, BACKEND_EJECTED, BACKEND_EJECTIONS, BACKEND_LAST_CHANGE, BACKEND_UP,
    BUILD_INFO, DATACENTER_HEALTHY, DATACENTER_UP, HEALTH_CHECK_DURATION, HEALTH_CHECK_FAILURES,
    LISTENER_CONNECTIONS, LISTENER_CONNECTIONS_TOTAL, LISTENER_LIMITED, OVERRIDE_ACTIVE,
    POOL_HEALTHY, POOL_MIN_HEALTHY, POOL_QUEUE, POOL_QUEUE_REFUSED, RETRY_BUDGET_EXHAUSTED,
    RouteMetrics, TCP_PIPES, TLS_CERT_EXPIRY, TLS_OCSP_STAPLE_VALID, escape_label, family,
};
use crate::overrides::{Override, Target};
use crate::proxy::tls::CertInfo;
use crate::state::{Backend, Pool, Snapshot};

/// The route metrics of `snapshot`'s listeners, once per (listener,
/// pool), sorted by listener name: (HTTP and HTTPS listeners', tcp
/// listeners').
pub(super) fn routes(snapshot: &Snapshot) -> (Vec<&Arc<RouteMetrics>>, Vec<&Arc<RouteMetrics>>) {
    let (mut http, mut tcp): (Vec<&Arc<RouteMetrics>>, Vec<&Arc<RouteMetrics>>) =
        Default::default();
    let mut listeners: Vec<_> = snapshot.listeners.values().collect();
    listeners.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    for l in listeners {
        let routes = match l.config.protocol {
            Protocol::Tcp => &mut tcp,
            _ => &mut http,
        };
        for route in std::iter::once(&l.default_route).chain(l.routes.iter().map(|(_, r)| r)) {
            if !routes.iter().any(|m| Arc::ptr_eq(m, &route.metrics)) {
                routes.push(&route.metrics);
            }
        }
    }
    (http, tcp)
}

/// The HTTP and TCP families of `snapshot`'s routes (what `/metrics` has
/// beyond the recorder for traffic; for proxies built without a daemon).
pub fn render_routes(out: &mut String, snapshot: &Snapshot) {
    let (http, tcp) = routes(snapshot);
    metrics::render_routes(out, &http, &tcp);
}

/// The whole `/metrics` page: the recorder's families, the HTTP families
/// of `snapshot`'s routes, the state gauges of `snapshot` and the expiry
/// of `certs` at `now`.
pub fn render(
    handle: &PrometheusHandle,
    snapshot: &Snapshot,
    certs: &[(String, Vec<CertInfo>)],
    overrides: &[(Target, Override)],
    listeners: &[(String, Arc<Slots>)],
    now: SystemTime,
) -> String {
    let mut out = without_removed_listeners(handle.render(), listeners);
    render_routes(&mut out, snapshot);
    crate::dns::render_geo_answers(&mut out);
    crate::dns::render_transport(&mut out);
    super::process::render(&mut out);
    let _ = writeln!(
        out,
        "# HELP {TCP_PIPES} Pipes tcp listeners and HTTP/1 response bodies splice through, in use or kept empty for reuse.\n# TYPE {TCP_PIPES} gauge\n{TCP_PIPES} {}",
        crate::proxy::pipes::open()
    );
    #[cfg(feature = "alloc-stats")]
    let _ = writeln!(
        out,
        "# HELP geolb_allocated_bytes Heap bytes currently allocated (alloc-stats builds).\n# TYPE geolb_allocated_bytes gauge\ngeolb_allocated_bytes {}",
        crate::alloc_stats::allocated()
    );
    let _ = writeln!(
        out,
        "# HELP {BUILD_INFO} Build information; always 1.\n# TYPE {BUILD_INFO} gauge\n{BUILD_INFO}{{version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        escape_label(metrics::commit())
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
            escape_label(&pool.name),
            b.label,
            u8::from(b.state() == State::Up)
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
            escape_label(&pool.name),
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
            escape_label(&pool.name),
            pool.healthy()
        );
    }
    family(
        &mut out,
        POOL_MIN_HEALTHY,
        "gauge",
        "The pool's min_healthy: below it, the data centers using the pool are unhealthy.",
    );
    for pool in &snapshot.pools {
        let _ = writeln!(
            out,
            "{POOL_MIN_HEALTHY}{{pool=\"{}\"}} {}",
            escape_label(&pool.name),
            pool.config.min_healthy
        );
    }
    render_checks(&mut out, snapshot);
    render_protection(&mut out, snapshot);
    let per_backend: Vec<&metrics::BackendMetrics> = backends().map(|(_, b)| &*b.metrics).collect();
    metrics::render_backends(&mut out, &per_backend);
    let _ = writeln!(
        out,
        "# HELP {DATACENTER_UP} 1 if the data center is healthy and not drained (DNS answers with it), else 0.\n# TYPE {DATACENTER_UP} gauge"
    );
    for dc in snapshot.datacenters.iter() {
        let _ = writeln!(
            out,
            "{DATACENTER_UP}{{datacenter=\"{}\"}} {}",
            escape_label(&dc.config.name),
            u8::from(dc.up())
        );
    }
    family(
        &mut out,
        DATACENTER_HEALTHY,
        "gauge",
        "1 if the data center's pools have min_healthy backends, its remote check passes and no down override is set (drain aside), else 0.",
    );
    for dc in snapshot.datacenters.iter() {
        let _ = writeln!(
            out,
            "{DATACENTER_HEALTHY}{{datacenter=\"{}\"}} {}",
            escape_label(&dc.config.name),
            u8::from(dc.healthy())
        );
    }
    render_listeners(&mut out, listeners);
    render_overrides(&mut out, overrides);
    render_expiry(&mut out, certs, now);
    out
}

/// Families the recorder keeps per `listener` (counted on the accept path,
/// where a handle lookup per event is the cost that matters).
const RECORDED_PER_LISTENER: [&str; 3] = [
    metrics::TLS_HANDSHAKE_ERRORS,
    metrics::PROXY_PROTOCOL_ERRORS,
    metrics::CLIENT_LIMITED,
];

/// `recorded` without the samples of [`RECORDED_PER_LISTENER`] whose
/// listener no longer runs: the recorder cannot forget a series, so a
/// listener removed by a reload is left out here. (Its count stays in the
/// recorder and resumes if a listener of that name comes back; counters
/// only grow, so that reads as a new series to Prometheus.)
fn without_removed_listeners(recorded: String, listeners: &[(String, Arc<Slots>)]) -> String {
    let running: Vec<String> = listeners.iter().map(|(n, _)| escape_label(n)).collect();
    let removed = |line: &str| {
        RECORDED_PER_LISTENER.iter().any(|family| {
            line.strip_prefix(family)
                .and_then(|rest| rest.strip_prefix('{'))
                .and_then(label_value("listener"))
                .is_some_and(|name| !running.iter().any(|r| *r == name))
        })
    };
    if !recorded.lines().any(removed) {
        return recorded;
    }
    let mut kept = String::with_capacity(recorded.len());
    for line in recorded.lines().filter(|l| !removed(l)) {
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}

/// The value of label `name` (still escaped) in `labels`, the text after a
/// series' `{`.
fn label_value(name: &str) -> impl Fn(&str) -> Option<&str> + '_ {
    move |labels| {
        let mut rest = labels;
        loop {
            let (key, after) = rest.split_once("=\"")?;
            // The value ends at the first quote not escaped by a backslash.
            let mut escaped = false;
            let end = after.char_indices().find_map(|(i, c)| match c {
                _ if escaped => {
                    escaped = false;
                    None
                }
                '\\' => {
                    escaped = true;
                    None
                }
                '"' => Some(i),
                _ => None,
            })?;
            if key.trim_start_matches(',') == name {
                return Some(&after[..end]);
            }
            rest = &after[end + 1..];
        }
    }
}

/// Passive health per backend, queues and retry budgets per pool.
fn render_protection(out: &mut String, snapshot: &Snapshot) {
    /// Name, type, help, value.
    type BackendFamily = (
        &'static str,
        &'static str,
        &'static str,
        fn(&Backend) -> u64,
    );
    let backend_families: [BackendFamily; 2] = [
        (
            BACKEND_EJECTED,
            "gauge",
            "1 while passive health has the backend ejected (not picked), else 0.",
            |b| u64::from(b.outlier.is_ejected()),
        ),
        (
            BACKEND_EJECTIONS,
            "counter",
            "Times passive health ejected the backend after failing requests in a row.",
            |b| b.outlier.ejections(),
        ),
    ];
    for (family, kind, help, value) in backend_families {
        let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
        for pool in &snapshot.pools {
            for b in &pool.backends {
                let _ = writeln!(
                    out,
                    "{family}{{pool=\"{}\",backend=\"{}\"}} {}",
                    escape_label(&pool.name),
                    b.label,
                    value(b)
                );
            }
        }
    }
    type PoolFamily = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        fn(&Pool) -> u64,
    );
    let pool_families: [PoolFamily; 4] = [
        (
            POOL_QUEUE,
            "gauge",
            "Requests waiting for a backend below its max_connections.",
            "",
            |p| p.shared.waiting() as u64,
        ),
        (
            POOL_QUEUE_REFUSED,
            "counter",
            "Requests answered 503 by the queue: full, or waited queue_timeout.",
            ",reason=\"full\"",
            |p| p.shared.refused_full(),
        ),
        (POOL_QUEUE_REFUSED, "", "", ",reason=\"timeout\"", |p| {
            p.shared.refused_timeout()
        }),
        (
            RETRY_BUDGET_EXHAUSTED,
            "counter",
            "Retries not made because the pool's retry budget was spent.",
            "",
            |p| p.shared.budget_exhausted(),
        ),
    ];
    for (family, kind, help, extra, value) in pool_families {
        // The second series of one family shares its HELP and TYPE.
        if !kind.is_empty() {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
        }
        for pool in &snapshot.pools {
            let _ = writeln!(
                out,
                "{family}{{pool=\"{}\"{extra}}} {}",
                escape_label(&pool.name),
                value(pool)
            );
        }
    }
}

/// The health-check families of every backend that has a check, by pool
/// and backend (a check shared by pools counts in each).
fn render_checks(out: &mut String, snapshot: &Snapshot) {
    let checked: Vec<(String, &crate::health::CheckStats)> = snapshot
        .pools
        .iter()
        .flat_map(|p| {
            p.backends.iter().filter_map(move |b| {
                let labels = format!(
                    "pool=\"{}\",backend=\"{}\"",
                    escape_label(&p.name),
                    escape_label(&b.label)
                );
                Some((labels, b.health.checks()?))
            })
        })
        .collect();
    family(
        out,
        HEALTH_CHECK_DURATION,
        "histogram",
        "Time each health check probe took (a timed-out probe counts its timeout), by pool and backend.",
    );
    for (labels, checks) in &checked {
        checks.duration.render(out, HEALTH_CHECK_DURATION, labels);
    }
    family(
        out,
        HEALTH_CHECK_FAILURES,
        "counter",
        "Health check probes that failed (each probe, not state changes), by pool and backend.",
    );
    for (labels, checks) in &checked {
        let _ = writeln!(
            out,
            "{HEALTH_CHECK_FAILURES}{{{labels}}} {}",
            checks.failures()
        );
    }
    family(
        out,
        BACKEND_LAST_CHANGE,
        "gauge",
        "Unix time the backend's health check state last changed (its first result counts as one).",
    );
    for (labels, checks) in &checked {
        let _ = writeln!(
            out,
            "{BACKEND_LAST_CHANGE}{{{labels}}} {}",
            checks.last_change()
        );
    }
}

/// The connections of each running listener, open and limited (rendered
/// from the accept loops' counts, so a listener removed by a reload leaves).
fn render_listeners(out: &mut String, listeners: &[(String, Arc<Slots>)]) {
    let mut sorted: Vec<_> = listeners.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    /// Name, type, help, value.
    type Family = (&'static str, &'static str, &'static str, fn(&Slots) -> u64);
    let families: [Family; 3] = [
        (
            LISTENER_CONNECTIONS_TOTAL,
            "counter",
            "Client connections accepted by the listener.",
            Slots::accepted,
        ),
        (
            LISTENER_CONNECTIONS,
            "gauge",
            "Client connections open on the listener.",
            |s| s.open() as u64,
        ),
        (
            LISTENER_LIMITED,
            "counter",
            "Times the listener stopped accepting at its max_connections (new connections waited in the backlog).",
            Slots::limited,
        ),
    ];
    for (family, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
        for (name, slots) in &sorted {
            let _ = writeln!(
                out,
                "{family}{{listener=\"{}\"}} {}",
                escape_label(name),
                value(slots)
            );
        }
    }
}

/// One series per override in force; setting it back to `auto` removes it.
fn render_overrides(out: &mut String, overrides: &[(Target, Override)]) {
    let _ = writeln!(
        out,
        "# HELP {OVERRIDE_ACTIVE} 1 for each runtime override in force, by kind, target, pool (\"\" for data centers, \"*\" for every pool) and state.\n# TYPE {OVERRIDE_ACTIVE} gauge"
    );
    for (target, state) in overrides {
        let (name, pool) = match target {
            Target::Datacenter { name } => (name.clone(), ""),
            Target::Backend { addr, pool } => (addr.to_string(), pool.as_deref().unwrap_or("*")),
        };
        let _ = writeln!(
            out,
            "{OVERRIDE_ACTIVE}{{kind=\"{}\",target=\"{}\",pool=\"{}\",state=\"{}\"}} 1",
            target.kind(),
            escape_label(&name),
            escape_label(pool),
            state.as_str()
        );
    }
}

/// Appends the [`TLS_CERT_EXPIRY`] and [`TLS_OCSP_STAPLE_VALID`] families
/// for `certs` (listener name, its certificates) to a Prometheus text
/// exposition. Rendered at scrape time because the values move with the
/// clock, not with events.
fn render_expiry(out: &mut String, certs: &[(String, Vec<CertInfo>)], now: SystemTime) {
    let help = "Seconds until the certificate's notAfter; negative once expired.";
    render_cert_gauge(out, TLS_CERT_EXPIRY, help, certs, |c| {
        Some(c.seconds_left(now))
    });
    let help = "Seconds until the stapled OCSP response's nextUpdate; 0 while none is stapled.";
    render_cert_gauge(out, TLS_OCSP_STAPLE_VALID, help, certs, |c| {
        c.ocsp.as_ref().map(|h| h.valid_seconds(now) as i64)
    });
}

/// A gauge family by listener and certificate file, with the series that
/// `value` has a value for (none at all: no family).
fn render_cert_gauge(
    out: &mut String,
    name: &str,
    help: &str,
    certs: &[(String, Vec<CertInfo>)],
    value: impl Fn(&CertInfo) -> Option<i64>,
) {
    let mut series = certs
        .iter()
        .flat_map(|(l, infos)| infos.iter().map(move |c| (l, c)))
        .filter_map(|(l, c)| Some((l, c, value(c)?)))
        .peekable();
    if series.peek().is_none() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (listener, c, v) in series {
        let _ = writeln!(
            out,
            "{name}{{listener=\"{}\",cert=\"{}\"}} {v}",
            escape_label(listener),
            escape_label(&c.cert.display().to_string()),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn removed_listeners_leave_the_recorded_families() {
        let recorded = "# HELP geolb_tls_handshake_errors_total x\n\
             # TYPE geolb_tls_handshake_errors_total counter\n\
             geolb_tls_handshake_errors_total{listener=\"web\"} 1\n\
             geolb_tls_handshake_errors_total{listener=\"gone\"} 2\n\
             geolb_proxy_protocol_errors_total{listener=\"a\\\"b\"} 3\n\
             geolb_config_reloads_total{result=\"success\"} 1\n";
        let running = |names: &[&str]| -> Vec<(String, Arc<Slots>)> {
            names
                .iter()
                .map(|n| (n.to_string(), Slots::new(None)))
                .collect()
        };
        let kept = without_removed_listeners(recorded.to_owned(), &running(&["web", "a\"b"]));
        assert_eq!(
            kept,
            recorded.replace(
                "geolb_tls_handshake_errors_total{listener=\"gone\"} 2\n",
                ""
            )
        );
        let kept = without_removed_listeners(recorded.to_owned(), &running(&["gone"]));
        assert!(kept.contains("{listener=\"gone\"} 2\n") && !kept.contains("\"web\""));
        assert!(!kept.contains("a\\\"b") && kept.contains("result=\"success\""));
        assert_eq!(label_value("b")("a=\"x\\\",b=\\\\\",b=\"y\"}"), Some("y"));
        assert_eq!(label_value("c")("a=\"x\"}"), None);
    }

    #[test]
    fn expiry_family_is_valid_exposition() {
        let mut out = String::new();
        let certs = vec![(
            "web\"tls".to_string(),
            vec![CertInfo {
                cert: PathBuf::from("/etc/a\\b.pem"),
                names: vec![],
                not_after: 100,
                ocsp: None,
            }],
        )];
        render_expiry(&mut out, &certs, UNIX_EPOCH + Duration::from_secs(40));
        assert_eq!(
            out,
            "# HELP geolb_tls_certificate_expiry_seconds Seconds until the certificate's notAfter; negative once expired.\n\
             # TYPE geolb_tls_certificate_expiry_seconds gauge\n\
             geolb_tls_certificate_expiry_seconds{listener=\"web\\\"tls\",cert=\"/etc/a\\\\b.pem\"} 60\n"
        );
        let mut none = String::new();
        render_expiry(&mut none, &[], UNIX_EPOCH);
        assert!(none.is_empty());
    }
}
