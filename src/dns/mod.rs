//! The authoritative GeoDNS server.
//!
//! - [`compile`]: a config (plus the GeoIP [`Locator`] and the data
//!   centers' health) -> one immutable [`DnsData`], swapped whole on reload
//!   through a [`SharedDnsData`].
//! - `zone`: zones from `[[dns.zone]]` and their master files.
//! - `answer`: one query -> one reply, a pure function of the data.
//! - `fast`: the common A/AAAA queries over UDP, answered from the wire
//!   bytes as `answer` would.
//! - `geo`: distances and the choice of data centers.
//! - `ecs`: the Client Subnet option, read from the wire.
//! - `cookie`: DNS cookies (RFC 7873, server cookies of RFC 9018).
//! - `rrl`: response rate limiting over UDP, per client network and
//!   answer.
//! - `server`: sockets and their lifetime: [`bind`], [`serve`].
//! - `udp`: the UDP path, a thread per socket answering without
//!   hickory-server.
//! - `tcp`: the TCP path: framing, idle timeout, a task per connection.
//! - `wire`: a message's bytes in, the reply's out, counted: the general
//!   path of both transports; panics while answering caught quietly.
//! - `count`: the query counters both paths record into.

mod answer;
mod cookie;
mod count;
mod ecs;
mod fast;
/// For the fuzz targets and their corpus replay only.
#[doc(hidden)]
pub mod fuzz;
mod geo;
mod querylog;
mod rrl;
mod server;
mod tcp;
mod udp;
mod wire;
mod zone;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::geoip::{Location, Locator};

pub use count::{register_series, render_geo_answers, render_transport};
pub use geo::{DcState, Tier, haversine_km};
pub use server::{DnsSockets, bind, serve};

/// Swaps in data with a fresh locator whenever the GeoIP database file
/// changes on disk (see [`crate::geoip::watch`]), until `shutdown`.
pub async fn watch_geoip(data: SharedDnsData, every: Duration, shutdown: CancellationToken) {
    let current = || data.load().locator().clone();
    let install = |old: &Arc<Locator>, fresh: Arc<Locator>| {
        let now = data.load_full();
        // A reload in between built its own locator from the file.
        if !Arc::ptr_eq(now.locator(), old) {
            return false;
        }
        let previous = data.compare_and_swap(&now, Arc::new(now.with_locator(fresh)));
        Arc::ptr_eq(&previous, &now)
    };
    crate::geoip::watch(every, shutdown, current, install).await
}

/// Whether a data center is healthy, drain aside (drain comes from the
/// config). `index` is into `config.datacenters` of the config the
/// [`DnsData`] holding this was compiled from.
pub trait DatacenterHealth: Send + Sync {
    fn is_up(&self, index: usize) -> bool;

    /// Drained at runtime (an admin override), on top of the config's
    /// `drain`.
    fn is_drained(&self, _index: usize) -> bool {
        false
    }
}

/// Every data center is healthy: for `geolb check`, `geolb lookup` without
/// a daemon, and tests.
pub struct AllUp;

impl DatacenterHealth for AllUp {
    fn is_up(&self, _index: usize) -> bool {
        true
    }
}

impl<F: Fn(usize) -> bool + Send + Sync> DatacenterHealth for F {
    fn is_up(&self, index: usize) -> bool {
        self(index)
    }
}

/// What the DNS server answers from: zones, geo names, data centers, the
/// locator and the health view, all of one config generation. Immutable;
/// a reload or a new GeoIP database builds a new one.
pub struct DnsData {
    compiled: Arc<Compiled>,
    locator: Arc<Locator>,
    /// Inside, not beside, the data: indexes into the data centers must
    /// come from the same config as the data centers themselves.
    health: Arc<dyn DatacenterHealth>,
}

/// The config-derived part, shared between a `DnsData` and the one built
/// from it when only the locator or the health view changes.
struct Compiled {
    zones: zone::Zones,
    /// What the UDP fast path answers from.
    fast: fast::Index,
    geo: Vec<geo::GeoName>,
    datacenters: Vec<geo::Datacenter>,
    /// `[dns] query_log` as a sampling threshold (0: off).
    query_log: u64,
    /// `[dns.rrl]`.
    rrl: rrl::Settings,
    /// `[dns] cookie_secret`, else the process's own.
    cookie_secret: cookie::Secret,
    /// `[dns] tcp_*`.
    tcp: crate::config::DnsTcpConfig,
}

/// The handle the server answers from; `store` a new [`DnsData`] to swap.
pub type SharedDnsData = Arc<ArcSwap<DnsData>>;

/// Compiles the `[dns]` part of `config` (reading zone files) and its data
/// centers. Errors name `dns.zone[i].file` (or `dns.zone[i]`). Without
/// `[dns]`, the data has no zones and every query is refused.
pub fn compile(
    config: &Config,
    locator: Arc<Locator>,
    health: Arc<dyn DatacenterHealth>,
) -> Result<DnsData, Vec<ConfigError>> {
    let datacenters: Vec<geo::Datacenter> = config
        .datacenters
        .iter()
        .map(geo::Datacenter::from_config)
        .collect();
    let mut errors = Vec::new();
    let mut geo = Vec::new();
    if let Some(dns) = &config.dns {
        for (i, g) in dns.geo.iter().enumerate() {
            let name = match Name::from_ascii(&g.name) {
                Ok(name) => name,
                Err(e) => {
                    errors.push(ConfigError::value(
                        format!("dns.geo[{i}].name"),
                        format_args!("{:?}", g.name),
                        format_args!("not a domain name: {e}"),
                    ));
                    continue;
                }
            };
            let candidates: Vec<usize> = if g.datacenters.is_empty() {
                (0..datacenters.len()).collect()
            } else {
                g.datacenters
                    .iter()
                    .filter_map(|n| datacenters.iter().position(|dc| dc.name == *n))
                    .collect()
            };
            if candidates.is_empty() {
                errors.push(ConfigError::at(
                    format!("dns.geo[{i}].datacenters"),
                    "no known data center to answer with",
                ));
                continue;
            }
            let names: Vec<String> = datacenters.iter().map(|dc| dc.name.clone()).collect();
            let maps = geo::Maps::compile(&g.maps, &names);
            let hashes = g.spill_over > 1
                || maps.entries.iter().any(|e| !e.weights.is_empty())
                || candidates.iter().any(|&i| datacenters[i].weighted());
            let lower = LowerName::from(&name);
            geo.push(geo::GeoName {
                salt: geo::name_salt(lower.to_string().as_bytes()),
                lower,
                name,
                ttl: g.ttl,
                answers: g.answers.clamp(1, candidates.len()),
                maps,
                spill_over: g.spill_over,
                hashes,
                counters: candidates.iter().map(|_| OnceLock::new()).collect(),
                candidates,
            });
        }
    }
    let lowers: Vec<LowerName> = geo.iter().map(|g| g.lower.clone()).collect();
    let zones = match &config.dns {
        Some(dns) => zone::compile(dns, &lowers).unwrap_or_else(|e| {
            errors.extend(e);
            zone::Zones::default()
        }),
        None => zone::Zones::default(),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let dns = config.dns.as_ref();
    Ok(DnsData {
        compiled: Arc::new(Compiled {
            fast: fast::Index::build(&zones, &geo),
            zones,
            geo,
            datacenters,
            query_log: querylog::threshold(config.dns.as_ref().map_or(0.0, |d| d.query_log)),
            rrl: dns.map_or_else(rrl::Settings::default, |d| rrl::Settings::new(&d.rrl)),
            cookie_secret: dns
                .and_then(|d| d.cookie_secret)
                .unwrap_or_else(cookie::process_secret),
            tcp: dns.map(|d| d.tcp).unwrap_or_default(),
        }),
        locator,
        health,
    })
}

impl DnsData {
    pub fn locator(&self) -> &Arc<Locator> {
        &self.locator
    }

    /// The same zones and data centers with another locator (a GeoIP
    /// database that changed on disk).
    pub fn with_locator(&self, locator: Arc<Locator>) -> DnsData {
        DnsData {
            compiled: self.compiled.clone(),
            locator,
            health: self.health.clone(),
        }
    }

    /// The same data with another health view.
    pub fn with_health(&self, health: Arc<dyn DatacenterHealth>) -> DnsData {
        DnsData {
            compiled: self.compiled.clone(),
            locator: self.locator.clone(),
            health,
        }
    }

    /// Zone origins, for logs and status.
    pub fn origins(&self) -> Vec<String> {
        let mut origins: Vec<String> = self
            .compiled
            .zones
            .iter()
            .map(|z| z.origin.to_ascii())
            .collect();
        origins.sort();
        origins
    }

    /// The data centers' states as the ranking sees them.
    fn state(&self, index: usize) -> DcState {
        DcState {
            up: self.health.is_up(index),
            drain: self.compiled.datacenters[index].drain || self.health.is_drained(index),
        }
    }

    /// Explains the decision for one geo name and client address `addr`
    /// (at `location`), with the data-center states `state` gives (None:
    /// unknown, ranked as healthy with the config's drain), as a query
    /// from `addr` (or with its full address as ECS) is answered. For
    /// `geolb lookup` and the status page.
    pub(crate) fn explain(
        &self,
        geo_index: usize,
        addr: IpAddr,
        location: &Location,
        state: &dyn Fn(&str) -> Option<DcState>,
    ) -> GeoExplanation {
        let geo = &self.compiled.geo[geo_index];
        let dcs = &self.compiled.datacenters;
        let known = |i: usize| state(&dcs[i].name);
        let full = if addr.is_ipv4() { 32 } else { 128 };
        let (ranking, scope) =
            answer::decide_at(self, geo_index, addr, Some(full), location, |i| {
                known(i).unwrap_or(DcState {
                    up: true,
                    drain: dcs[i].drain,
                })
            });
        let chosen = &ranking.chosen;
        let name = |i: usize| dcs[i].name.clone();
        let shares = |list: &mut dyn Iterator<Item = (usize, u32)>| -> Shares {
            list.map(|(i, w)| (name(i), w)).collect()
        };
        let entry = ranking.entry.map(|e| &geo.maps.entries[e]);
        let map = match entry {
            Some(e) => Some(describe_entry(e, addr, location)),
            None if !geo.maps.entries.is_empty() => Some(format!(
                "no map entry matches {}: nearest first",
                describe_region(location)
            )),
            None => None,
        };
        let split = ranking.split.and_then(|picked| {
            let e = entry?;
            let list = shares(&mut e.first.iter().copied().zip(e.weights.iter().copied()));
            Some((list, name(picked)))
        });
        let spill = (!ranking.spill.is_empty()).then(|| {
            let list = shares(&mut ranking.spill.iter().map(|&i| (i, dcs[i].capacity)));
            (name(ranking.order[0]), list, name(chosen[0]))
        });
        let picks = chosen
            .iter()
            .filter(|&&i| dcs[i].weighted())
            .flat_map(|&i| {
                let dc = &dcs[i];
                let v4 = (dc.v4.len() > 1 && !dc.v4_weights.is_empty())
                    .then(|| weighted_pick(dc, &dc.v4, &dc.v4_weights, dc.v4_for(ranking.hash)));
                let v6 = (dc.v6.len() > 1 && !dc.v6_weights.is_empty())
                    .then(|| weighted_pick(dc, &dc.v6, &dc.v6_weights, dc.v6_for(ranking.hash)));
                v4.into_iter().chain(v6)
            })
            .collect();
        let in_order = |i: usize| ranking.order.iter().position(|&o| o == i);
        GeoExplanation {
            name: geo.name.to_ascii(),
            ttl: geo.ttl,
            answers: geo.answers,
            tier: ranking.tier,
            map,
            excluded: geo
                .candidates
                .iter()
                .filter(|&&i| in_order(i).is_none_or(|k| k >= ranking.inside))
                .map(|&i| name(i))
                .collect(),
            outside: ranking.outside,
            split,
            spill,
            picks,
            scope: scope.unwrap_or(0),
            candidates: ranking
                .order
                .iter()
                .enumerate()
                .map(|(k, &i)| CandidateExplanation {
                    name: name(i),
                    distance_km: location.coords.map(|c| haversine_km(c, dcs[i].location)),
                    state: known(i),
                    config_drain: dcs[i].drain,
                    chosen: chosen.contains(&i),
                    outside: k >= ranking.inside,
                })
                .collect(),
            a: chosen
                .iter()
                .flat_map(|&i| dcs[i].v4_for(ranking.hash).iter().map(|a| IpAddr::V4(*a)))
                .collect(),
            aaaa: chosen
                .iter()
                .flat_map(|&i| dcs[i].v6_for(ranking.hash).iter().map(|a| IpAddr::V6(*a)))
                .collect(),
        }
    }

    /// Index of the geo name `name` (absolute or not, any case).
    pub(crate) fn geo_index(&self, name: &str) -> Option<usize> {
        let name = Name::from_ascii(name).ok()?;
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        let lower = LowerName::from(name);
        self.compiled.geo.iter().position(|g| g.lower == lower)
    }

    pub(crate) fn geo_count(&self) -> usize {
        self.compiled.geo.len()
    }
}

/// Data centers and their weights (or capacities).
pub(crate) type Shares = Vec<(String, u32)>;

/// One geo name's decision, for people.
#[derive(Debug, Clone)]
pub(crate) struct GeoExplanation {
    pub name: String,
    pub ttl: u32,
    pub answers: usize,
    pub tier: Tier,
    /// The map entry that matched and why; None when the name has no map.
    pub map: Option<String>,
    /// Candidates the map keeps from this client's region.
    pub excluded: Vec<String>,
    /// The answer came from outside the region (`failover_outside`).
    pub outside: bool,
    /// A weighted split: (data center, weight) and the one this client
    /// starts at.
    pub split: Option<(Shares, String)>,
    /// Spill-over: the unavailable first choice, (data center, capacity)
    /// it spread over, and where this client landed.
    pub spill: Option<(String, Shares, String)>,
    /// Weighted address picks, one line each.
    pub picks: Vec<String>,
    /// The ECS scope of an answer to the client's full address.
    pub scope: u8,
    /// In ranked order: nearest first (the configured order when the
    /// location is unknown), a map entry's data centers before the rest.
    pub candidates: Vec<CandidateExplanation>,
    pub a: Vec<IpAddr>,
    pub aaaa: Vec<IpAddr>,
}

#[derive(Debug, Clone)]
pub(crate) struct CandidateExplanation {
    pub name: String,
    pub distance_km: Option<f64>,
    /// None: unknown (no daemon to ask).
    pub state: Option<DcState>,
    pub config_drain: bool,
    pub chosen: bool,
    /// Outside the client's region: used only when none inside is
    /// available (`failover_outside`).
    pub outside: bool,
}

/// Which map entry matched and why.
fn describe_entry(e: &geo::MapEntry, addr: IpAddr, location: &Location) -> String {
    use crate::config::MapMatch;
    let r = &location.region;
    let why = match &e.matches {
        MapMatch::Cidr(c) => format!(
            "cidr = \"{}/{}\": the address {addr} is in it",
            c.addr, c.prefix
        ),
        MapMatch::Subdivision(cc, sub) => format!(
            "subdivision = \"{cc}-{sub}\": the client's subdivision is {cc}-{}",
            r.subdivision().unwrap_or("?")
        ),
        MapMatch::Country(cc) => format!("country = \"{cc}\": the client's country is {cc}"),
        MapMatch::Continent(cc) => {
            format!("continent = \"{cc}\": the client's continent is {cc}")
        }
    };
    let mut text = format!("{} ({why})", e.path);
    if e.only {
        text.push_str("; only its datacenters");
    }
    if e.failover_outside {
        text.push_str("; the excluded ones when none of the others is available");
    }
    text
}

/// The client's region, as maps see it.
fn describe_region(location: &Location) -> String {
    let r = &location.region;
    let mut parts = Vec::new();
    if let Some(c) = r.continent() {
        parts.push(format!("continent {c}"));
    }
    if let Some(c) = r.country() {
        parts.push(format!("country {c}"));
        if let Some(s) = r.subdivision() {
            parts.push(format!("subdivision {c}-{s}"));
        }
    }
    if parts.is_empty() {
        "(no region known for the client)".to_owned()
    } else {
        format!("({})", parts.join(", "))
    }
}

/// "eu-west: 198.51.100.10 (weight 3 of 4)".
fn weighted_pick<T: std::fmt::Display + PartialEq>(
    dc: &geo::Datacenter,
    all: &[T],
    weights: &[u32],
    picked: &[T],
) -> String {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let Some(i) = picked.first().and_then(|p| all.iter().position(|a| a == p)) else {
        return format!("{}: no address", dc.name);
    };
    format!("{}: {} (weight {} of {total})", dc.name, all[i], weights[i])
}
