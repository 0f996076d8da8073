//! The status page (`GET /`): what /status says, for a person in the
//! middle of an incident. One self-contained HTML page (no script, no
//! external asset) that reloads itself every 5 seconds.
//!
//! Request rates are computed between two renderings of the page (the
//! counters are totals since start); the page says over which interval.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{BackendStatus, Status, unix_seconds};
use crate::dns::{DcState, DnsData};
use crate::state::Snapshot;

/// At most this many `[[geoip.network]]` entries are ranked for the page:
/// each costs one ranking per geo name on every rendering.
const MAX_NETWORKS: usize = 64;

/// A rate needs two samples at least this far apart; a reload of the page
/// sooner shows the rate of the previous interval.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// (pool, listener) -> (total, errors).
/// What a rate is kept for: a (pool, listener) route or a (pool,
/// backend address).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Route(String, String),
    Backend(String, String),
}

type Totals = HashMap<Key, (u64, u64)>;

struct Sample {
    at: Instant,
    totals: Totals,
}

/// The previous sample and the rates computed from it: per (pool,
/// listener), per second (total, errors), and the interval they cover.
struct Rates {
    previous: Option<Sample>,
    rates: HashMap<Key, (f64, f64)>,
    interval: Option<Duration>,
}

static RATES: LazyLock<Mutex<Rates>> = LazyLock::new(|| {
    Mutex::new(Rates {
        previous: None,
        rates: HashMap::new(),
        interval: None,
    })
});

impl Rates {
    fn update(&mut self, now: Instant, totals: Totals) {
        if let Some(previous) = &self.previous {
            let elapsed = now.duration_since(previous.at);
            if elapsed < MIN_INTERVAL {
                return;
            }
            let seconds = elapsed.as_secs_f64();
            self.rates = totals
                .iter()
                .map(|(key, &(total, errors))| {
                    let (t0, e0) = previous.totals.get(key).copied().unwrap_or((0, 0));
                    let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
                    (key.clone(), (rate(total, t0), rate(errors, e0)))
                })
                .collect();
            self.interval = Some(elapsed);
        }
        self.previous = Some(Sample { at: now, totals });
    }
}

/// For each `[[geoip.network]]` of the config (the first [`MAX_NETWORKS`])
/// and each geo name: (the network as shown, the geo name, the data
/// center answered first now), ranked with the snapshot's data-center
/// states by the code the DNS server runs.
pub(super) fn first_choices(snapshot: &Snapshot, dns: &DnsData) -> Vec<(String, String, String)> {
    let Some(geoip) = &snapshot.config.geoip else {
        return Vec::new();
    };
    let states: HashMap<&str, DcState> = snapshot
        .datacenters
        .iter()
        .map(|dc| {
            let state = DcState {
                up: dc.healthy(),
                drain: dc.drained(),
            };
            (dc.config.name.as_str(), state)
        })
        .collect();
    let state = |name: &str| states.get(name).copied();
    let mut out = Vec::new();
    for network in geoip.networks.iter().take(MAX_NETWORKS) {
        let location = dns.locator().locate(network.cidr.addr);
        let shown = match &network.country {
            Some(country) => format!("{}/{} ({country})", network.cidr.addr, network.cidr.prefix),
            None => format!("{}/{}", network.cidr.addr, network.cidr.prefix),
        };
        for geo in 0..dns.geo_count() {
            let explained = dns.explain(geo, network.cidr.addr, &location, &state);
            if let Some(first) = explained.candidates.iter().find(|c| c.chosen) {
                let name = explained.name.trim_end_matches('.').to_owned();
                out.push((shown.clone(), name, first.name.clone()));
            }
        }
    }
    out
}

/// The geo names that list data center `dc` among their candidates (an
/// empty list means every data center).
pub(super) fn geo_names_of(snapshot: &Snapshot, dc: &str) -> Vec<String> {
    let Some(dns) = &snapshot.config.dns else {
        return Vec::new();
    };
    dns.geo
        .iter()
        .filter(|g| g.datacenters.is_empty() || g.datacenters.iter().any(|d| d == dc))
        .map(|g| g.name.trim_end_matches('.').to_owned())
        .collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "3s", "4m 05s", "2h 10m", "3d 4h".
fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
    h1{margin:0 0 .2em}h2{margin-top:1.5em;border-bottom:1px solid #ddd}\
    table{border-collapse:collapse;margin-bottom:1em}\
    td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
    th{background:#f4f4f4}.num{text-align:right}.meta{color:#666}\
    .up,.pass{color:#070;font-weight:600}.down,.fail{color:#b00;font-weight:600}\
    .unknown,.auto{color:#777}.drain,.drained{color:#a60;font-weight:600}";

pub(super) fn render(status: &Status) -> String {
    let now = SystemTime::now();
    let totals: Totals = status
        .pools
        .iter()
        .flat_map(|p| {
            let routes = p.routes.iter().map(|r| {
                let key = Key::Route(p.name.clone(), r.listener.clone());
                (key, (r.total, r.errors))
            });
            let backends = p.backends.iter().map(|b| {
                let key = Key::Backend(p.name.clone(), b.addr.clone());
                (key, (b.requests, b.errors))
            });
            routes.chain(backends)
        })
        .collect();
    let (rates, interval) = {
        let mut rates = crate::locked(&RATES);
        rates.update(Instant::now(), totals);
        (rates.rates.clone(), rates.interval)
    };
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>geolb status</title>\
         <meta http-equiv=\"refresh\" content=\"5\"><style>{STYLE}</style></head><body>\
         <h1>geolb</h1><p class=\"meta\">version {} (commit {}) &middot; pid {} &middot; \
         config generation {} &middot; refreshes every 5 s</p>",
        env!("CARGO_PKG_VERSION"),
        html_escape(crate::metrics::commit()),
        status.pid,
        status.config_generation,
    );
    listeners(&mut html, status);
    datacenters(&mut html, status);
    html.push_str("<h2>Pools</h2>");
    let rate_note = match interval {
        Some(i) => format!(
            "per second over the {:.1} s since the previous view",
            i.as_secs_f64()
        ),
        None => "per second: shown from the next view on".to_owned(),
    };
    for p in &status.pools {
        let _ = write!(
            html,
            "<h3>{} &middot; {} of {} backends healthy (min {}) &middot; {}</h3>",
            html_escape(&p.name),
            p.healthy,
            p.backends.len(),
            p.min_healthy,
            p.balance
        );
        if !p.routes.is_empty() {
            let _ = write!(
                html,
                "<table><tr><th>listener</th><th>since start</th><th>errors since start</th>\
                 <th>rate ({rate_note})</th></tr>"
            );
            for r in &p.routes {
                let (what, errors) = match r.protocol {
                    "tcp" => ("connections", "failed connects"),
                    _ => ("requests", "5xx"),
                };
                let rate = match rates.get(&Key::Route(p.name.clone(), r.listener.clone())) {
                    Some((total, errs)) => format!("{total:.1} {what}/s, {errs:.1} {errors}/s"),
                    None => "-".to_owned(),
                };
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td class=\"num\">{} {what}</td><td class=\"num\">{} {errors}</td><td>{rate}</td></tr>",
                    html_escape(&r.listener),
                    r.total,
                    r.errors,
                );
            }
            html.push_str("</table>");
        }
        html.push_str(
            "<table><tr><th>backend</th><th>state</th><th>override</th><th>weight</th>\
             <th>active</th><th>responses since start</th><th>failures since start</th>\
             <th>rate</th><th>ejected</th><th>last check</th><th>check took</th>\
             <th>in this state for</th></tr>",
        );
        for b in &p.backends {
            let rate = rates.get(&Key::Backend(p.name.clone(), b.addr.clone()));
            backend_row(&mut html, b, rate, now);
        }
        html.push_str("</table>");
    }
    html.push_str(
        "<p class=\"meta\">Failures of a backend: its 5xx answers, failed connects and \
         timeouts. JSON at <a href=\"/status\">/status</a>, Prometheus at <a href=\"/metrics\">/metrics</a>.</p>\
         </body></html>\n",
    );
    html
}

fn listeners(html: &mut String, status: &Status) {
    html.push_str(
        "<h2>Listeners</h2><table><tr><th>name</th><th>protocol</th><th>bind</th><th>bound</th></tr>",
    );
    for l in &status.listeners {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(&l.name),
            l.protocol.as_str(),
            l.bind,
            l.local_addr
        );
    }
    html.push_str("</table>");
    if !status.dns.udp.is_empty() {
        let _ = write!(
            html,
            "<p>DNS on {} (udp and tcp)</p>",
            status.dns.udp.join(", ")
        );
    }
}

fn datacenters(html: &mut String, status: &Status) {
    if status.datacenters.is_empty() {
        return;
    }
    html.push_str(
        "<h2>Data centers</h2><table><tr><th>name</th><th>state</th><th>override</th>\
         <th>pools</th><th>remote check</th><th>geo names</th>\
         <th>answered first for</th></tr>",
    );
    for dc in &status.datacenters {
        let state = match (dc.up, dc.drain) {
            (true, _) => "up",
            (false, true) => "drained",
            (false, false) => "down",
        };
        let first: Vec<String> = dc
            .first_for
            .iter()
            .map(|f| {
                format!(
                    "{} &larr; {}",
                    html_escape(&f.name),
                    html_escape(&f.network)
                )
            })
            .collect();
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"{state}\">{state}</td><td class=\"{o}\">{o}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(&dc.name),
            html_escape(&dc.pools.join(", ")),
            remote_check(dc),
            html_escape(&dc.geo_names.join(", ")),
            if first.is_empty() {
                "-".to_owned()
            } else {
                first.join("<br>")
            },
            o = dc.runtime_override,
        );
    }
    html.push_str(
        "</table><p class=\"meta\">\"Answered first for\": the geo names whose first answer is \
         this data center now, for each [[geoip.network]] of the config.</p>",
    );
}

/// A remote check's state, with why its last probe failed.
fn remote_check(dc: &super::DatacenterStatus) -> String {
    match (dc.remote_check, &dc.remote_last_check) {
        (None, _) => "-".to_owned(),
        (Some(state), Some(last)) if last.result == "fail" => format!(
            "{state} <span class=\"fail\">(last: {})</span>",
            html_escape(&last.reason)
        ),
        (Some(state), _) => state.to_owned(),
    }
}

fn backend_row(html: &mut String, b: &BackendStatus, rate: Option<&(f64, f64)>, now: SystemTime) {
    let (check, took) = match &b.last_check {
        Some(c) if c.result == "pass" => {
            ("<span class=\"pass\">pass</span>".to_owned(), c.duration)
        }
        Some(c) => (
            format!(
                "<span class=\"fail\">fail: {}</span>",
                html_escape(&c.reason)
            ),
            c.duration,
        ),
        None => ("no check".to_owned(), f64::NAN),
    };
    let took = if took.is_nan() {
        "-".to_owned()
    } else {
        format!("{:.1} ms", took * 1000.0)
    };
    let since = b
        .last_change
        .map_or("-".to_owned(), |t| age(unix_seconds(now) - t));
    let override_shown = match b.override_scope {
        Some(scope) => format!("{} ({scope})", b.runtime_override),
        None => b.runtime_override.to_owned(),
    };
    // Passive health, beside the active check's state.
    let ejected = if b.ejected {
        format!(
            "<span class=\"fail\">{:.0} s left</span> ({} so far)",
            b.ejected_seconds_left.ceil(),
            b.ejections
        )
    } else {
        format!("no ({} so far)", b.ejections)
    };
    let rate = rate.map_or("-".to_owned(), |(total, failed)| {
        format!("{total:.1}/s, {failed:.1} failed/s")
    });
    let _ = write!(
        html,
        "<tr><td>{}</td><td class=\"{s}\">{s}</td><td class=\"{}\">{override_shown}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td>{rate}</td><td>{ejected}</td><td>{check}</td>\
         <td class=\"num\">{took}</td><td>{since}</td></tr>",
        html_escape(&b.addr),
        b.runtime_override,
        b.weight,
        b.active,
        b.requests,
        b.errors,
        s = b.state,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(age(3.4), "3s");
        assert_eq!(age(245.0), "4m 05s");
        assert_eq!(age(7800.0), "2h 10m");
        assert_eq!(age(3.0 * 86400.0 + 4.0 * 3600.0), "3d 4h");
        assert_eq!(age(-5.0), "0s");
    }

    #[test]
    fn rates_between_samples_at_least_a_second_apart() {
        let mut rates = Rates {
            previous: None,
            rates: HashMap::new(),
            interval: None,
        };
        let key = Key::Route("p".to_owned(), "web".to_owned());
        let t0 = Instant::now();
        rates.update(t0, HashMap::from([(key.clone(), (10, 1))]));
        assert!(rates.rates.is_empty());
        // Too soon: nothing computed, the first sample kept.
        rates.update(
            t0 + Duration::from_millis(500),
            HashMap::from([(key.clone(), (11, 1))]),
        );
        assert!(rates.interval.is_none());
        rates.update(
            t0 + Duration::from_secs(2),
            HashMap::from([(key.clone(), (30, 5))]),
        );
        assert_eq!(rates.rates[&key], (10.0, 2.0));
        assert_eq!(rates.interval, Some(Duration::from_secs(2)));
    }
}
