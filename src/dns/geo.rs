//! Choosing data centers for a geo name: policy maps, distance,
//! availability, fail-open, spill-over and weights.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use hickory_proto::rr::{LowerName, Name};
use metrics::Counter;
use smallvec::SmallVec;

use crate::config::{Cidr, DatacenterConfig, GeoMapConfig, LatLon, MapMatch};
use crate::geoip::{Location, Region, code};

/// Mean Earth radius (IUGG), in km.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Great-circle distance between two points, in km (haversine formula).
pub fn haversine_km(a: LatLon, b: LatLon) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    // min(1.0): rounding can push h a hair above 1 for antipodal points.
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

#[derive(Debug)]
pub(crate) struct Datacenter {
    pub name: String,
    pub location: LatLon,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    /// One per address of `v4` (`v6`); empty: every address is given out.
    pub v4_weights: Vec<u32>,
    pub v6_weights: Vec<u32>,
    /// Its share of clients spilled over from a failed data center.
    pub capacity: u32,
    pub drain: bool,
}

impl Datacenter {
    pub fn from_config(dc: &DatacenterConfig) -> Datacenter {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        let (mut v4_weights, mut v6_weights) = (Vec::new(), Vec::new());
        for (i, addr) in dc.addresses.iter().enumerate() {
            let weight = dc.weights.get(i).copied();
            match addr {
                IpAddr::V4(a) => {
                    v4.push(*a);
                    v4_weights.extend(weight);
                }
                IpAddr::V6(a) => match a.to_ipv4_mapped() {
                    Some(mapped) => {
                        v4.push(mapped);
                        v4_weights.extend(weight);
                    }
                    None => {
                        v6.push(*a);
                        v6_weights.extend(weight);
                    }
                },
            }
        }
        Datacenter {
            name: dc.name.clone(),
            location: dc.location,
            v4,
            v6,
            v4_weights,
            v6_weights,
            capacity: dc.capacity,
            drain: dc.drain,
        }
    }

    /// Whether answers from it depend on the client's network: one address
    /// of a family picked by weight among several.
    pub fn weighted(&self) -> bool {
        (self.v4.len() > 1 && !self.v4_weights.is_empty())
            || (self.v6.len() > 1 && !self.v6_weights.is_empty())
    }

    /// The IPv4 addresses an answer carries: all of them, or the one
    /// `hash` picks by weight.
    #[inline]
    pub fn v4_for(&self, hash: Option<u64>) -> &[Ipv4Addr] {
        by_weight(&self.v4, &self.v4_weights, hash)
    }

    #[inline]
    pub fn v6_for(&self, hash: Option<u64>) -> &[Ipv6Addr] {
        by_weight(&self.v6, &self.v6_weights, hash)
    }
}

#[inline]
fn by_weight<'a, T>(all: &'a [T], weights: &[u32], hash: Option<u64>) -> &'a [T] {
    match hash {
        Some(hash) if all.len() > 1 && !weights.is_empty() => {
            let i = pick(
                mix(hash ^ SALT_ADDRESS),
                weights.iter().map(|&w| u64::from(w)),
            );
            std::slice::from_ref(&all[i])
        }
        _ => all,
    }
}

/// Salts of the three picks made from one client hash, so that they are
/// independent: the clients a split sends to a canary spread over its
/// addresses (and, when it fails, over the spill-over) like any others.
const SALT_SPLIT: u64 = 0x9e37_79b9_7f4a_7c15;
const SALT_SPILL: u64 = 0xc2b2_ae3d_27d4_eb4f;
const SALT_ADDRESS: u64 = 0x1656_67b1_9e37_79f9;

/// splitmix64's finaliser: a fixed function, so every server of an anycast
/// address (and every restart) picks alike for one client network.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The index `hash` lands on when each item takes a share of the hash
/// space in proportion to its weight; equal shares when all are 0.
pub(crate) fn pick(hash: u64, weights: impl Iterator<Item = u64> + Clone) -> usize {
    let (count, total) = weights
        .clone()
        .fold((0u64, 0u64), |(n, t), w| (n + 1, t + w));
    if total == 0 {
        return ((u128::from(hash) * u128::from(count)) >> 64) as usize;
    }
    // Multiply-shift: the point is uniform over 0..total for uniform hashes.
    let point = ((u128::from(hash) * u128::from(total)) >> 64) as u64;
    let mut sum = 0;
    for (i, w) in weights.enumerate() {
        sum += w;
        if point < sum {
            return i;
        }
    }
    (count - 1) as usize
}

/// The prefix of a client's address that its hash covers: one /24 (IPv4)
/// or /56 (IPv6) network, as resolvers' ECS defaults send.
const HASH_V4: u8 = 24;
const HASH_V6: u8 = 56;

/// The hash of the client network `addr` is in, cut to `cap` bits when the
/// resolver sent fewer (an ECS source prefix), salted per geo name; and
/// how many leading bits of `addr`, in its family as given, decide it.
pub(crate) fn client_hash(addr: IpAddr, cap: Option<u8>, salt: u64) -> (u64, u8) {
    let (bits, width, offset) = match addr {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u8, 0u8),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), 32, 96),
            None => (u128::from(v6), 128, 0),
        },
    };
    let prefix = if width == 32 { HASH_V4 } else { HASH_V6 };
    let prefix = cap.map_or(prefix, |cap| prefix.min(cap.saturating_sub(offset)));
    let masked = match prefix {
        0 => 0,
        p => {
            bits & (u128::MAX << (u32::from(width) - u32::from(p)))
                & (u128::MAX >> (128 - u32::from(width)))
        }
    };
    let folded = (masked as u64) ^ ((masked >> 64) as u64).rotate_left(17);
    let hash = mix(folded ^ mix(salt ^ ((u64::from(width) << 8) | u64::from(prefix))));
    (hash, prefix + offset)
}

/// A stable salt from a geo name, so that two names split independently.
pub(crate) fn name_salt(name: &[u8]) -> u64 {
    // FNV-1a: fixed across processes, unlike the std hasher's keys.
    name.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One compiled `[[dns.geo.map]]` entry.
#[derive(Debug)]
pub(crate) struct MapEntry {
    /// `dns.geo[0].map[1]`.
    pub path: String,
    pub matches: MapMatch,
    /// Tried first, in this order.
    pub first: Vec<usize>,
    /// One per `first`; empty: no split.
    pub weights: Vec<u32>,
    pub only: bool,
    pub exclude: Vec<usize>,
    pub failover_outside: bool,
}

impl MapEntry {
    /// Whether the first data center depends on the client's network.
    fn splits(&self) -> bool {
        self.first.len() > 1 && !self.weights.is_empty()
    }
}

/// A geo name's policy map, indexed by what entries match.
#[derive(Debug, Default)]
pub(crate) struct Maps {
    pub entries: Vec<MapEntry>,
    /// (network, entry), longest prefix first; IPv4-mapped ones as IPv4.
    cidrs: Vec<(Cidr, usize)>,
    subdivisions: Vec<([u8; 2], [u8; 3], usize)>,
    countries: Vec<([u8; 2], usize)>,
    continents: Vec<([u8; 2], usize)>,
}

impl Maps {
    /// `entries` must name only `names`' data centers (the config checked).
    pub fn compile(config: &[GeoMapConfig], names: &[String]) -> Maps {
        let index = |n: &String| names.iter().position(|m| m == n);
        let mut maps = Maps::default();
        for (e, m) in config.iter().enumerate() {
            let first: Vec<usize> = m.datacenters.iter().filter_map(index).collect();
            maps.entries.push(MapEntry {
                path: m.path.clone(),
                matches: m.matches.clone(),
                weights: m.weights.clone(),
                exclude: m.exclude.iter().filter_map(index).collect(),
                only: m.only,
                failover_outside: m.failover_outside,
                first,
            });
            match &m.matches {
                MapMatch::Cidr(cidr) => maps.cidrs.push((crate::geoip::normalise(*cidr), e)),
                MapMatch::Subdivision(cc, sub) => {
                    if let (Some(cc), Some(sub)) = (code(Some(cc)), code(Some(sub))) {
                        maps.subdivisions.push((cc, sub, e));
                    }
                }
                MapMatch::Country(cc) => maps.countries.extend(code(Some(cc)).map(|c| (c, e))),
                MapMatch::Continent(cc) => maps.continents.extend(code(Some(cc)).map(|c| (c, e))),
            }
        }
        maps.cidrs.sort_by_key(|(c, _)| std::cmp::Reverse(c.prefix));
        maps
    }

    pub fn has_cidrs(&self) -> bool {
        !self.cidrs.is_empty()
    }

    /// The entry for a region: subdivision, else country, else continent.
    pub fn by_region(&self, r: &Region) -> Option<usize> {
        let found = self
            .subdivisions
            .iter()
            .find(|(cc, sub, _)| *cc == r.country && *sub == r.subdivision)
            .map(|m| m.2);
        found
            .or_else(|| {
                self.countries
                    .iter()
                    .find(|m| m.0 == r.country)
                    .map(|m| m.1)
            })
            .or_else(|| {
                self.continents
                    .iter()
                    .find(|m| m.0 == r.continent)
                    .map(|m| m.1)
            })
    }

    /// The longest CIDR entry holding `addr`, and how many leading bits of
    /// `addr` (in its family as given) decide that: enough to tell it from
    /// every CIDR entry, holding it or not.
    pub fn by_cidr(&self, addr: IpAddr) -> (Option<usize>, u8) {
        let (canonical, offset) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), 96),
                None => (addr, 0),
            },
            IpAddr::V4(_) => (addr, 0),
        };
        let mut found = None;
        let mut decided = 0;
        for &(cidr, e) in &self.cidrs {
            if cidr.addr.is_ipv4() != canonical.is_ipv4() {
                continue;
            }
            if cidr.contains(canonical) {
                found = found.or(Some(e));
                decided = decided.max(cidr.prefix);
            } else {
                decided = decided.max(crate::geoip::common_prefix(cidr.addr, canonical) + 1);
            }
        }
        (found, decided + offset)
    }
}

#[derive(Debug)]
pub(crate) struct GeoName {
    pub name: Name,
    pub lower: LowerName,
    pub ttl: u32,
    /// Indexes into the data centers, in the configured order.
    pub candidates: Vec<usize>,
    pub answers: usize,
    pub maps: Maps,
    pub spill_over: usize,
    /// Whether some answer can depend on the client's network beyond its
    /// location (a split, spill-over, weighted addresses): only then is
    /// the client hashed.
    pub hashes: bool,
    /// [`name_salt`] of the name.
    pub salt: u64,
    /// `geolb_dns_geo_answers_total{name, datacenter}`, one per candidate,
    /// resolved on first use (after the recorder is installed).
    pub counters: Vec<OnceLock<Counter>>,
}

impl GeoName {
    /// Whether some candidate has an IPv6 (`v6`) or IPv4 address.
    pub fn has_addresses(&self, datacenters: &[Datacenter], v6: bool) -> bool {
        self.candidates.iter().any(|&i| {
            let dc = &datacenters[i];
            if v6 {
                !dc.v6.is_empty()
            } else {
                !dc.v4.is_empty()
            }
        })
    }
}

/// A data center's state as the ranking sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DcState {
    /// Healthy (drain aside).
    pub up: bool,
    pub drain: bool,
}

impl DcState {
    pub fn available(self) -> bool {
        self.up && !self.drain
    }
}

/// Which candidates the choice was made among.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Healthy and undrained ones (the normal case).
    Available,
    /// None was available: undrained ones, health ignored.
    Undrained,
    /// All were drained: every candidate.
    All,
}

/// The data centers a client may get, best first, before health: what
/// depends on its location alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Candidates {
    /// Indexes into the data centers.
    pub order: SmallVec<[usize; 8]>,
    /// How many of `order`, from the front, the client's region may use;
    /// the rest (`failover_outside`) only when none of those is available.
    pub inside: usize,
    /// The map entry that decided (index into `maps.entries`); None:
    /// nearest first, every candidate.
    pub entry: Option<usize>,
}

/// The ordered candidates for a client at `location`, before health: the
/// region's map entry (most specific first), else nearest first (the
/// configured order when the location is unknown). Depends on the
/// location only; CIDR entries are [`candidates_for`]'s.
#[inline]
pub(crate) fn candidate_order(
    geo: &GeoName,
    dcs: &[Datacenter],
    location: &Location,
) -> Candidates {
    let entry = match geo.maps.entries.is_empty() {
        true => None,
        false => geo.maps.by_region(&location.region),
    };
    candidates_for(geo, dcs, location.coords, entry)
}

/// The ordered candidates when map entry `entry` (or none) applies.
#[inline]
pub(crate) fn candidates_for(
    geo: &GeoName,
    dcs: &[Datacenter],
    coords: Option<LatLon>,
    entry: Option<usize>,
) -> Candidates {
    let Some(e) = entry.map(|e| &geo.maps.entries[e]) else {
        // From a slice: a copy, where collecting an iterator costs the
        // answering path dozens of instructions.
        let order = nearest(SmallVec::from_slice(&geo.candidates), dcs, coords);
        return Candidates {
            inside: order.len(),
            order,
            entry: None,
        };
    };
    let mut order: SmallVec<[usize; 8]> = e.first.iter().copied().collect();
    let unlisted = |i: &usize| !e.first.contains(i);
    if !e.only {
        let rest = geo
            .candidates
            .iter()
            .copied()
            .filter(|i| unlisted(i) && !e.exclude.contains(i))
            .collect();
        order.extend(nearest(rest, dcs, coords));
    }
    let inside = order.len();
    if e.failover_outside {
        let outside = geo
            .candidates
            .iter()
            .copied()
            .filter(|i| !order[..inside].contains(i))
            .collect();
        order.extend(nearest(outside, dcs, coords));
    }
    Candidates {
        order,
        inside,
        entry,
    }
}

/// `order` nearest first (stable: equal distances keep the configured
/// order); as given when the location is unknown.
#[inline]
fn nearest(
    mut order: SmallVec<[usize; 8]>,
    dcs: &[Datacenter],
    coords: Option<LatLon>,
) -> SmallVec<[usize; 8]> {
    sort_nearest(&mut order, dcs, coords);
    order
}

#[inline]
fn sort_nearest(order: &mut [usize], dcs: &[Datacenter], coords: Option<LatLon>) {
    let Some(c) = coords.filter(|_| order.len() > 1) else {
        return;
    };
    // On the stack for the usual handful of candidates: the answering
    // path's cost.
    let (mut stack, mut heap) = ([0f64; 8], Vec::new());
    let distance: &mut [f64] = match order.len() {
        n if n <= stack.len() => &mut stack[..n],
        n => {
            heap.resize(n, 0.0);
            &mut heap
        }
    };
    for (d, &i) in distance.iter_mut().zip(order.iter()) {
        *d = haversine_km(c, dcs[i].location);
    }
    // Insertion sort, on both at once (a sort by key would copy pairs
    // twice).
    for k in 1..order.len() {
        let mut j = k;
        while j > 0 && distance[j - 1].total_cmp(&distance[j]).is_gt() {
            distance.swap(j - 1, j);
            order.swap(j - 1, j);
            j -= 1;
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Ranking {
    /// The candidates as ranked: [`Candidates::order`] with a split's pick
    /// moved to the front.
    pub order: SmallVec<[usize; 8]>,
    pub inside: usize,
    pub entry: Option<usize>,
    /// The chosen ones, best first: at most `answers`, all from one tier.
    pub chosen: SmallVec<[usize; 4]>,
    pub tier: Tier,
    /// Chosen from outside the region (`failover_outside`).
    pub outside: bool,
    /// The client hash, when the name hashes: picks addresses by weight.
    pub hash: Option<u64>,
    /// The data center a weighted split started this client at.
    pub split: Option<usize>,
    /// The available data centers the first one's clients were spread
    /// over (empty: no spill-over); the chosen one is `chosen[0]`.
    pub spill: SmallVec<[usize; 4]>,
}

impl Ranking {
    /// Whether the client hash decided something: then the answer holds
    /// for the hashed network only.
    pub fn hashed(&self, dcs: &[Datacenter]) -> bool {
        self.split.is_some()
            || !self.spill.is_empty()
            || (self.hash.is_some() && self.chosen.iter().any(|&i| dcs[i].weighted()))
    }
}

/// Ranks `candidates` once: a split's pick first (by `hash`), then the
/// tier, the first non-empty one of available / undrained / all, inside
/// the region (outside it only for available ones, with
/// `failover_outside`); `answers` are taken from that tier only, so a down
/// data center is never given out beside an available one. When the first
/// candidate is not available, its clients spread over the next
/// `spill_over` available ones by capacity.
#[inline]
pub(crate) fn rank(
    geo: &GeoName,
    dcs: &[Datacenter],
    candidates: Candidates,
    hash: Option<u64>,
    state: impl Fn(usize) -> DcState,
) -> Ranking {
    let Candidates {
        mut order,
        inside,
        entry,
    } = candidates;
    let mut split = None;
    if let (Some(e), Some(hash)) = (entry.map(|e| &geo.maps.entries[e]), hash)
        && e.splits()
    {
        let j = pick(
            mix(hash ^ SALT_SPLIT),
            e.weights.iter().map(|&w| u64::from(w)),
        );
        // `first` leads `order`: the pick moves ahead of the others.
        order[..=j].rotate_right(1);
        split = Some(order[0]);
    }
    let states: SmallVec<[DcState; 8]> = order.iter().map(|&i| state(i)).collect();
    let (range, tier, outside) = tier_of(&states, inside);
    let eligible_ones = range.filter(|&k| tier.admits(states[k])).map(|k| order[k]);
    let mut spill = SmallVec::new();
    let spills = geo.spill_over > 1
        && tier == Tier::Available
        && !states.first().is_some_and(|s| s.available());
    let chosen = match hash {
        Some(hash) if spills => {
            let mut pool: SmallVec<[usize; 8]> = eligible_ones.collect();
            let n = geo.spill_over.min(pool.len());
            if n > 1 {
                let j = pick(
                    mix(hash ^ SALT_SPILL),
                    pool[..n].iter().map(|&i| u64::from(dcs[i].capacity)),
                );
                spill.extend(pool[..n].iter().copied());
                pool[..=j].rotate_right(1);
            }
            pool.into_iter().take(geo.answers).collect()
        }
        _ => eligible_ones.take(geo.answers).collect(),
    };
    Ranking {
        chosen,
        order,
        inside,
        entry,
        tier,
        outside,
        hash,
        split,
        spill,
    }
}

impl Tier {
    fn admits(self, s: DcState) -> bool {
        match self {
            Tier::Available => s.available(),
            Tier::Undrained => !s.drain,
            Tier::All => true,
        }
    }
}

/// The range of candidates to choose from, its tier, and whether it is
/// outside the region: the first of available inside, available outside,
/// undrained inside, all inside that is not empty.
#[inline]
fn tier_of(states: &[DcState], inside: usize) -> (std::ops::Range<usize>, Tier, bool) {
    let (ins, outs) = states.split_at(inside);
    if ins.iter().any(|s| s.available()) {
        (0..inside, Tier::Available, false)
    } else if outs.iter().any(|s| s.available()) {
        (inside..states.len(), Tier::Available, true)
    } else if ins.iter().any(|s| !s.drain) {
        (0..inside, Tier::Undrained, false)
    } else {
        (0..inside, Tier::All, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dc(name: &str, lat: f64, lon: f64) -> Datacenter {
        Datacenter {
            name: name.into(),
            location: LatLon { lat, lon },
            v4: vec![],
            v6: vec![],
            v4_weights: vec![],
            v6_weights: vec![],
            capacity: 1,
            drain: false,
        }
    }

    fn geo(candidates: &[usize], answers: usize) -> GeoName {
        let name = Name::from_ascii("api.mysite.com.").unwrap();
        GeoName {
            lower: LowerName::from(&name),
            name,
            ttl: 30,
            candidates: candidates.to_vec(),
            answers,
            maps: Maps::default(),
            spill_over: 1,
            hashes: false,
            salt: 0,
            counters: vec![],
        }
    }

    /// Ranks with no map: `candidates` nearest `coords` first.
    fn rank(
        candidates: &[usize],
        dcs: &[Datacenter],
        coords: Option<LatLon>,
        answers: usize,
        state: impl Fn(usize) -> DcState,
    ) -> Ranking {
        let g = geo(candidates, answers);
        super::rank(&g, dcs, candidates_for(&g, dcs, coords, None), None, state)
    }

    /// The contract's three data centers.
    fn dcs() -> Vec<Datacenter> {
        vec![
            dc("eu-west", 53.35, -6.26),
            dc("us-east", 39.04, -77.49),
            dc("ap-southeast", 1.35, 103.82),
        ]
    }

    const LONDON: LatLon = LatLon {
        lat: 51.5142,
        lon: -0.0931,
    };
    const MILTON: LatLon = LatLon {
        lat: 47.2513,
        lon: -122.3149,
    };

    #[test]
    fn haversine_matches_known_distances() {
        let paris = LatLon {
            lat: 48.8566,
            lon: 2.3522,
        };
        let d = haversine_km(LONDON, paris);
        assert!((d - 343.0).abs() < 5.0, "{d}");
        assert_eq!(haversine_km(LONDON, LONDON), 0.0);
        let antipode = haversine_km(
            LatLon { lat: 0.0, lon: 0.0 },
            LatLon {
                lat: 0.0,
                lon: 180.0,
            },
        );
        assert!((antipode - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6);
        let pole = haversine_km(
            LatLon {
                lat: 90.0,
                lon: 0.0,
            },
            LatLon {
                lat: -90.0,
                lon: 77.0,
            },
        );
        assert!((pole - antipode).abs() < 1e-6);
    }

    fn all_up(_: usize) -> DcState {
        DcState {
            up: true,
            drain: false,
        }
    }

    #[test]
    fn nearest_first_and_unknown_location_keeps_the_configured_order() {
        let dcs = dcs();
        let r = rank(&[1, 0, 2], &dcs, Some(LONDON), 1, all_up);
        assert_eq!(r.chosen.as_slice(), [0]);
        assert_eq!(r.tier, Tier::Available);
        assert_eq!(r.order.as_slice(), [0, 1, 2]);
        let r = rank(&[1, 0, 2], &dcs, Some(MILTON), 2, all_up);
        assert_eq!(r.chosen.as_slice(), [1, 0]);
        let r = rank(&[1, 0, 2], &dcs, None, 2, all_up);
        assert_eq!(r.chosen.as_slice(), [1, 0]);
        assert_eq!(r.order.as_slice(), [1, 0, 2]);
    }

    #[test]
    fn fail_open_goes_tier_by_tier() {
        let dcs = dcs();
        let states = |up: [bool; 3], drain: [bool; 3]| {
            move |i: usize| DcState {
                up: up[i],
                drain: drain[i],
            }
        };
        // eu-west down: the next nearest available one, only it.
        let r = rank(
            &[0, 1, 2],
            &dcs,
            Some(LONDON),
            2,
            states([false, true, false], [false; 3]),
        );
        assert_eq!((r.tier, r.chosen.as_slice()), (Tier::Available, &[1][..]));
        // eu-west drained though healthy: same.
        let r = rank(
            &[0, 1, 2],
            &dcs,
            Some(LONDON),
            1,
            states([true; 3], [true, false, false]),
        );
        assert_eq!(r.chosen.as_slice(), [1]);
        // Nothing available: undrained ones, nearest first, health ignored.
        let r = rank(
            &[0, 1, 2],
            &dcs,
            Some(LONDON),
            1,
            states([false; 3], [true, false, false]),
        );
        assert_eq!((r.tier, r.chosen.as_slice()), (Tier::Undrained, &[1][..]));
        // Healthy but drained vs down and undrained: the undrained one.
        let r = rank(
            &[0, 1, 2],
            &dcs,
            Some(LONDON),
            1,
            states([true, false, true], [true, false, true]),
        );
        assert_eq!((r.tier, r.chosen.as_slice()), (Tier::Undrained, &[1][..]));
        // Everything drained: all of them, nearest first.
        let r = rank(
            &[0, 1, 2],
            &dcs,
            Some(MILTON),
            3,
            states([true; 3], [true; 3]),
        );
        assert_eq!((r.tier, r.chosen.as_slice()), (Tier::All, &[1, 0, 2][..]));
    }

    #[test]
    fn mapped_addresses_count_as_ipv4() {
        let config = DatacenterConfig {
            name: "x".into(),
            location: LONDON,
            addresses: vec![
                "192.0.2.1".parse().unwrap(),
                "::ffff:192.0.2.2".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ],
            weights: vec![],
            capacity: 1,
            pools: vec![],
            check: None,
            drain: false,
            always_up: true,
        };
        let dc = Datacenter::from_config(&config);
        assert_eq!(dc.v4.len(), 2);
        assert_eq!(dc.v6.len(), 1);
    }

    fn entry(matches: MapMatch, first: &[&str], weights: &[u32]) -> GeoMapConfig {
        GeoMapConfig {
            path: "dns.geo[0].map[0]".into(),
            matches,
            datacenters: first.iter().map(|s| s.to_string()).collect(),
            weights: weights.to_vec(),
            only: false,
            exclude: vec![],
            failover_outside: false,
        }
    }

    fn names(dcs: &[Datacenter]) -> Vec<String> {
        dcs.iter().map(|d| d.name.clone()).collect()
    }

    fn region(continent: &str, country: &str, subdivision: &str) -> Region {
        fn some(s: &str) -> Option<&str> {
            (!s.is_empty()).then_some(s)
        }
        Region::of(some(continent), some(country), some(subdivision))
    }

    #[test]
    fn picks_follow_the_weights_and_skip_zero_ones() {
        let counts = |weights: &[u64]| {
            let mut n = vec![0usize; weights.len()];
            for i in 0..100_000u64 {
                n[pick(mix(i), weights.iter().copied())] += 1;
            }
            n
        };
        let n = counts(&[7, 3]);
        assert!((n[0] as f64 / 100_000.0 - 0.7).abs() < 0.01, "{n:?}");
        let n = counts(&[0, 5, 0, 5]);
        assert_eq!((n[0], n[2]), (0, 0), "{n:?}");
        assert!((n[1] as f64 / 100_000.0 - 0.5).abs() < 0.01, "{n:?}");
        let n = counts(&[0, 0, 0]);
        assert!(
            n.iter()
                .all(|&c| (c as f64 / 100_000.0 - 1.0 / 3.0).abs() < 0.01),
            "{n:?}"
        );
    }

    #[test]
    fn a_client_hash_covers_its_slash_24_or_56_or_the_ecs_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (a, bits) = client_hash(ip("192.0.2.1"), None, 7);
        assert_eq!(bits, 24);
        assert_eq!(client_hash(ip("192.0.2.200"), Some(32), 7), (a, 24));
        assert_ne!(client_hash(ip("192.0.3.1"), None, 7).0, a);
        assert_ne!(
            client_hash(ip("192.0.2.1"), None, 8).0,
            a,
            "salted per name"
        );
        // A shorter ECS source prefix: the hash covers it only.
        let (b, bits) = client_hash(ip("192.0.2.0"), Some(20), 7);
        assert_eq!(bits, 20);
        assert_eq!(client_hash(ip("192.0.15.9"), Some(20), 7).0, b);
        assert_eq!(client_hash(ip("::ffff:192.0.2.9"), None, 7), (a, 120));
        let (c, bits) = client_hash(ip("2001:db8:0:ff::1"), None, 7);
        assert_eq!(bits, 56);
        assert_eq!(client_hash(ip("2001:db8:0:aa::2"), None, 7).0, c);
        assert_eq!(client_hash(ip("10.1.2.3"), Some(0), 7).1, 0);
    }

    #[test]
    fn the_most_specific_map_entry_wins() {
        let dcs = dcs();
        let maps = Maps::compile(
            &[
                entry(MapMatch::Continent("NA".into()), &["ap-southeast"], &[]),
                entry(MapMatch::Country("US".into()), &["eu-west"], &[]),
                entry(
                    MapMatch::Subdivision("US".into(), "WA".into()),
                    &["us-east"],
                    &[],
                ),
                entry(
                    MapMatch::Cidr(Cidr {
                        addr: "216.160.83.0".parse().unwrap(),
                        prefix: 24,
                    }),
                    &["ap-southeast"],
                    &[],
                ),
            ],
            &names(&dcs),
        );
        assert_eq!(maps.by_region(&region("NA", "US", "WA")), Some(2));
        assert_eq!(maps.by_region(&region("NA", "US", "OR")), Some(1));
        assert_eq!(maps.by_region(&region("NA", "CA", "")), Some(0));
        assert_eq!(maps.by_region(&region("EU", "GB", "ENG")), None);
        assert_eq!(maps.by_region(&Region::default()), None);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(maps.by_cidr(ip("216.160.83.56")), (Some(3), 24));
        assert_eq!(maps.by_cidr(ip("::ffff:216.160.83.56")), (Some(3), 120));
        // Outside it: the bits that tell the address from the network.
        assert_eq!(maps.by_cidr(ip("216.160.82.1")), (None, 24));
        assert_eq!(maps.by_cidr(ip("16.0.0.1")), (None, 1));
        assert_eq!(maps.by_cidr(ip("2001:db8::1")), (None, 0));
    }

    #[test]
    fn entries_order_restrict_and_fail_over_outside() {
        let dcs = dcs();
        let mut e = entry(MapMatch::Continent("EU".into()), &["us-east"], &[]);
        e.exclude = vec!["ap-southeast".into()];
        let mut only = entry(MapMatch::Continent("AS".into()), &["ap-southeast"], &[]);
        only.only = true;
        let mut outside = entry(MapMatch::Continent("NA".into()), &["us-east"], &[]);
        outside.only = true;
        outside.failover_outside = true;
        let mut g = geo(&[0, 1, 2], 1);
        g.maps = Maps::compile(&[e, only, outside], &names(&dcs));
        let c = candidates_for(&g, &dcs, Some(LONDON), Some(0));
        assert_eq!((c.order.as_slice(), c.inside), (&[1, 0][..], 2));
        let c = candidates_for(&g, &dcs, Some(LONDON), Some(1));
        assert_eq!((c.order.as_slice(), c.inside), (&[2][..], 1));
        let c = candidates_for(&g, &dcs, Some(LONDON), Some(2));
        assert_eq!((c.order.as_slice(), c.inside), (&[1, 0, 2][..], 1));
        let down = |d: usize| {
            move |i: usize| DcState {
                up: i != d,
                drain: false,
            }
        };
        // Residency: the region's only data center down fails open inside it.
        let r = super::rank(
            &g,
            &dcs,
            candidates_for(&g, &dcs, None, Some(1)),
            None,
            down(2),
        );
        assert_eq!(
            (r.tier, r.chosen.as_slice(), r.outside),
            (Tier::Undrained, &[2][..], false)
        );
        // Unless it may fail over outside: then the nearest outside one.
        let r = super::rank(
            &g,
            &dcs,
            candidates_for(&g, &dcs, Some(LONDON), Some(2)),
            None,
            down(1),
        );
        assert_eq!(
            (r.tier, r.chosen.as_slice(), r.outside),
            (Tier::Available, &[0][..], true)
        );
    }

    #[test]
    fn splits_and_spill_over_spread_clients_by_weight_and_capacity() {
        let mut dcs = dcs();
        dcs.push(dc("eu-central", 50.11, 8.68));
        dcs[1].capacity = 3; // us-east
        dcs[3].capacity = 1; // eu-central
        let mut g = geo(&[0, 1, 2, 3], 1);
        g.maps = Maps::compile(
            &[entry(
                MapMatch::Country("GB".into()),
                &["eu-west", "eu-central"],
                &[70, 30],
            )],
            &names(&dcs),
        );
        g.spill_over = 2;
        let mut landed = [0usize; 4];
        let mut starts = [0usize; 4];
        for i in 0..20_000u64 {
            let cands = || candidates_for(&g, &dcs, Some(LONDON), Some(0));
            let r = super::rank(&g, &dcs, cands(), Some(mix(i)), all_up);
            starts[r.chosen[0]] += 1;
            assert!(r.spill.is_empty());
            // eu-west down: its clients (only) spread over the next two.
            let r = super::rank(&g, &dcs, cands(), Some(mix(i)), |d| DcState {
                up: d != 0,
                drain: false,
            });
            if r.split == Some(0) {
                assert_eq!(r.spill.as_slice(), [3, 1]);
                landed[r.chosen[0]] += 1;
            } else {
                assert_eq!((r.chosen[0], r.spill.len()), (3, 0));
            }
        }
        let share = |n: usize, of: usize| n as f64 / of as f64;
        assert!((share(starts[0], 20_000) - 0.7).abs() < 0.02, "{starts:?}");
        assert!((share(starts[3], 20_000) - 0.3).abs() < 0.02, "{starts:?}");
        let spilled = landed[1] + landed[3];
        assert!(
            (share(landed[1], spilled) - 0.75).abs() < 0.02,
            "{landed:?}"
        );
        assert_eq!(landed[0] + landed[2], 0);
    }

    #[test]
    fn more_candidates_than_the_stack_holds_sort_alike() {
        let dcs: Vec<Datacenter> = (0..12).map(|i| dc("x", 0.0, f64::from(i) * 10.0)).collect();
        let mut order: Vec<usize> = (0..12).rev().collect();
        sort_nearest(&mut order, &dcs, Some(LatLon { lat: 0.0, lon: 0.0 }));
        assert_eq!(order, (0..12).collect::<Vec<_>>());
    }
}
