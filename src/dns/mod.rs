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
//! - `scopes`: each geo name's ECS scope tree (its candidate order by
//!   network, merged where neighbours agree), rebuilt with the locator.
//! - `ecs`: the Client Subnet option, read from the wire.
//! - `dnssec`: online signing of zones with `dnssec`: keys, RRSIGs
//!   (cached), compact denial of existence.
//! - `cookie`: DNS cookies (RFC 7873, server cookies of RFC 9018).
//! - `identity`: NSID (RFC 5001) and the CHAOS names `id.server`,
//!   `hostname.bind`, `version.bind` (RFC 4892).
//! - `rrl`: response rate limiting over UDP, per client network and
//!   answer.
//! - `server`: sockets and their lifetime: [`bind`], [`serve`].
//! - `udp`: the UDP path, a thread per socket answering without
//!   hickory-server.
//! - `tcp`: the TCP path: framing, idle timeout, a task per connection.
//! - `wire`: a message's bytes in, the reply's out, counted: the general
//!   path of both transports; panics while answering caught quietly.
//! - `count`: the query counters both paths record into.
//! - `tsig`: TSIG (RFC 8945) on the wire: checking requests, signing.
//! - `transfer`: AXFR and IXFR over TCP, and the versions IXFR serves.
//! - `notify`: NOTIFY (RFC 1996) to secondaries when a zone changes.

mod answer;
mod cache;
mod cookie;
mod count;
mod dnssec;
mod ecs;
mod fast;
/// For the fuzz targets and their corpus replay only.
#[doc(hidden)]
pub mod fuzz;
mod geo;
mod identity;
mod notify;
mod querylog;
mod rrl;
mod scopes;
mod server;
mod tcp;
mod transfer;
mod tsig;
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
use crate::geoip::{GeoIpError, Location, Locator};

pub use count::{register_series, render_geo_answers, render_transport};
pub use geo::{DcState, Tier, haversine_km};
pub use server::{DnsSockets, bind, serve};

/// Swaps in data with a fresh locator whenever the GeoIP database file
/// changes on disk (see [`crate::geoip::watch`]), until `shutdown`.
pub async fn watch_geoip(data: SharedDnsData, every: Duration, shutdown: CancellationToken) {
    let shared = data.clone();
    let current = move || shared.load().locator().clone();
    let install = move |old: &Arc<Locator>, fresh: Arc<Locator>| -> Result<bool, GeoIpError> {
        let now = data.load_full();
        // A reload in between built its own locator from the file.
        if !Arc::ptr_eq(now.locator(), old) {
            return Ok(false);
        }
        let next = now.with_locator(fresh)?;
        let previous = data.compare_and_swap(&now, Arc::new(next));
        Ok(Arc::ptr_eq(&previous, &now))
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
    /// Built from `compiled` and `locator`, so rebuilt with either.
    scopes: Arc<scopes::Scopes>,
    /// Inside, not beside, the data: indexes into the data centers must
    /// come from the same config as the data centers themselves.
    health: Arc<dyn DatacenterHealth>,
    /// The versions of each zone IXFR serves from, carried across reloads
    /// by [`DnsData::continue_from`].
    history: Arc<transfer::History>,
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
    /// `[dns] nsid` and `[dns.chaos]`.
    identity: identity::Identities,
    /// `[[dns.tsig]]`.
    keys: Vec<Arc<tsig::Key>>,
    /// Each zone's `transfer` and `notify`, by origin.
    transfer: std::collections::HashMap<LowerName, transfer::Policy>,
    /// `[dns] ixfr_versions`.
    ixfr_versions: usize,
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
    let keys = match config.dns.as_ref().map(tsig::keys) {
        Some(Ok(keys)) => keys,
        Some(Err(e)) => {
            errors.extend(e);
            Vec::new()
        }
        None => Vec::new(),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    // Read by every geo answer; reads the whole database (the caller is
    // off the serving threads).
    let scopes = scopes::Scopes::build(&geo, &datacenters, &locator)
        .map_err(|e| vec![crate::geoip::config_error(config, e)])?;
    let scopes = Arc::new(scopes);
    let dns = config.dns.as_ref();
    let (history, policies) = match dns {
        Some(dns) => transfer::compile(dns, &zones, &geo, &datacenters, &keys),
        None => Default::default(),
    };
    Ok(DnsData {
        history: Arc::new(history),
        compiled: Arc::new(Compiled {
            keys,
            transfer: policies,
            ixfr_versions: dns.map_or(1, |d| d.ixfr_versions),
            fast: fast::Index::build(&zones, &geo, &datacenters),
            zones,
            geo,
            datacenters,
            query_log: querylog::threshold(config.dns.as_ref().map_or(0.0, |d| d.query_log)),
            rrl: dns.map_or_else(rrl::Settings::default, |d| rrl::Settings::new(&d.rrl)),
            cookie_secret: dns
                .and_then(|d| d.cookie_secret)
                .unwrap_or_else(cookie::process_secret),
            tcp: dns.map(|d| d.tcp).unwrap_or_default(),
            identity: identity::Identities::compile(dns),
        }),
        locator,
        scopes,
        health,
    })
}

impl DnsData {
    /// The DS records the parents of the signed zones should hold, one
    /// zone-file line each (`geolb check` prints them).
    pub fn ds_records(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .compiled
            .zones
            .iter()
            .filter_map(|z| z.signer.as_ref())
            .flat_map(|s| s.ds().iter().cloned())
            .collect();
        lines.sort();
        lines
    }

    pub fn locator(&self) -> &Arc<Locator> {
        &self.locator
    }

    /// The same zones and data centers with another locator (a GeoIP
    /// database that changed on disk), the scope trees rebuilt from it:
    /// reads the whole database, so off the serving threads.
    pub fn with_locator(&self, locator: Arc<Locator>) -> Result<DnsData, GeoIpError> {
        let c = &self.compiled;
        let scopes = scopes::Scopes::build(&c.geo, &c.datacenters, &locator)?;
        Ok(DnsData {
            compiled: self.compiled.clone(),
            locator,
            scopes: Arc::new(scopes),
            health: self.health.clone(),
            history: self.history.clone(),
        })
    }

    /// The same data with another health view.
    pub fn with_health(&self, health: Arc<dyn DatacenterHealth>) -> DnsData {
        DnsData {
            compiled: self.compiled.clone(),
            locator: self.locator.clone(),
            scopes: self.scopes.clone(),
            health,
            history: self.history.clone(),
        }
    }

    /// This data with the zone versions of `previous` kept for IXFR, and
    /// the zones whose serial changed (to NOTIFY); an error for each zone
    /// whose records changed under the same serial. For [`crate::reload`].
    pub fn continue_from(
        &self,
        previous: &DnsData,
    ) -> Result<(DnsData, ChangedZones), Vec<ConfigError>> {
        let (history, changed) = transfer::continue_from(
            &previous.history,
            &self.history,
            &self.compiled.transfer,
            self.compiled.ixfr_versions,
        )?;
        let data = DnsData {
            compiled: self.compiled.clone(),
            locator: self.locator.clone(),
            scopes: self.scopes.clone(),
            health: self.health.clone(),
            history: Arc::new(history),
        };
        Ok((data, ChangedZones(changed)))
    }

    /// Sends NOTIFY for `changed` zones to their `notify` targets, in the
    /// background until answered, retried, or `shutdown`.
    pub fn notify(
        &self,
        changed: ChangedZones,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: &CancellationToken,
    ) {
        notify::send(self, changed.0, tasks, shutdown);
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

    /// The ECS scope geo name `geo_index` answers `ip` with (before the
    /// source prefix caps it): its neighbours' networks included when they
    /// get the same answer.
    pub(crate) fn ecs_scope(&self, geo_index: usize, ip: IpAddr) -> u8 {
        self.scopes.find(geo_index, ip).1
    }

    pub(crate) fn geo_count(&self) -> usize {
        self.compiled.geo.len()
    }
}

/// Zones whose serial a reload changed, from [`DnsData::continue_from`].
pub struct ChangedZones(Vec<LowerName>);

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
