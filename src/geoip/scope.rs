//! ECS scope aggregation: for each answer policy, a binary prefix tree
//! over the whole IPv4 and IPv6 address space whose leaves are the widest
//! aligned networks in which every address gets the same answer key, so a
//! resolver is told the widest scope that is still correct (gdnsd builds
//! the same per map). A leaf's depth is the scope; it also carries the
//! key, so a query needs no database lookup at all.
//!
//! Built in one depth-first walk of the database (ascending addresses),
//! the gaps between its networks filled with the miss location and the
//! `[[geoip.network]]` overrides laid over it (longest prefix wins, and any
//! override wins over the database, as [`Locator::locate`]). Sibling
//! leaves with equal keys are merged as soon as both exist, so memory
//! stays that of the merged tree (one node per two leaves) plus a stack of
//! at most 129 frames, whatever the size of the database.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smallvec::SmallVec;

use super::{DbAnswer, GeoIpError, Location, Locator, Place, decode_position};

/// Set on a child reference that is a leaf: the rest is the key's index.
const LEAF: u32 = 1 << 31;

/// One family's tree: internal nodes hold two child references.
#[derive(Debug, Clone)]
struct Trie {
    root: u32,
    nodes: Vec<[u32; 2]>,
}

/// One answer policy's trees, for both families, and its distinct keys.
#[derive(Debug, Clone)]
pub struct ScopeTree<K> {
    v4: Trie,
    v6: Trie,
    keys: Vec<K>,
}

/// The trees of every policy, built in one walk.
#[derive(Debug, Clone)]
pub struct ScopeTrees<K> {
    pub trees: Vec<ScopeTree<K>>,
    /// IPv4 then IPv6, before aggregation: the pieces the database, its
    /// gaps and the overrides cut the space into (what geolb answered as
    /// scopes before: one scope per database network).
    pub unmerged: [TreeStats; 2],
}

/// Leaves of a tree: the (network, scope) cache entries a resolver
/// covering the whole family would keep, and the distinct scope lengths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub leaves: usize,
    pub lengths: BTreeSet<u8>,
}

impl<K> ScopeTree<K> {
    /// The key of `ip` and how many of its leading bits decide it, counted
    /// in `ip`'s family (an IPv4-mapped address is looked up as IPv4,
    /// 96 added, as `Locator::locate` counts).
    pub fn find(&self, ip: IpAddr) -> (&K, u8) {
        let (trie, bits, width, offset) = match ip {
            IpAddr::V4(v4) => (&self.v4, u128::from(u32::from(v4)), 32, 0),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (&self.v4, u128::from(u32::from(v4)), 32, 96),
                None => (&self.v6, u128::from(v6), 128, 0),
            },
        };
        let mut at = trie.root;
        let mut depth: u8 = 0;
        while at & LEAF == 0 && depth < width {
            let bit = (bits >> (width - 1 - depth)) & 1;
            at = trie.nodes[at as usize][bit as usize];
            depth += 1;
        }
        (&self.keys[(at & !LEAF) as usize], depth + offset)
    }

    /// The leaves of the IPv4 (`v6` false) or IPv6 tree.
    pub fn stats(&self, v6: bool) -> TreeStats {
        let trie = if v6 { &self.v6 } else { &self.v4 };
        let mut stats = TreeStats::default();
        let mut stack = vec![(trie.root, 0u8)];
        while let Some((at, depth)) = stack.pop() {
            if at & LEAF != 0 {
                stats.leaves += 1;
                stats.lengths.insert(depth);
            } else {
                let [l, r] = trie.nodes[at as usize];
                stack.extend([(l, depth + 1), (r, depth + 1)]);
            }
        }
        stats
    }

    /// Bytes held on the heap, keys counted by their inline size.
    pub fn heap_bytes(&self) -> usize {
        (self.v4.nodes.capacity() + self.v6.nodes.capacity()) * size_of::<[u32; 2]>()
            + self.keys.capacity() * size_of::<K>()
    }
}

/// Where a piece of the address space gets its location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Origin {
    Miss,
    /// A database record, by data-section offset.
    Record(usize),
    /// Index into the locator's overrides.
    Override(usize),
}

/// A database network, in the family's bits.
#[derive(Debug, Clone, Copy)]
struct Net {
    start: u128,
    last: u128,
    origin: Origin,
}

type Refs = SmallVec<[u32; 4]>;

struct Policy<K> {
    nodes: Vec<[u32; 2]>,
    keys: Vec<K>,
    interned: HashMap<K, u32, foldhash::fast::FixedState>,
}

struct Walk<'l, K, F> {
    locator: &'l Locator,
    width: u8,
    nets: Option<Box<dyn Networks + 'l>>,
    next: Option<Net>,
    /// The last address of the network before `next`.
    seen_last: Option<u128>,
    error: Option<String>,
    /// This family's overrides: start, prefix, index; longest first.
    overrides: Vec<(u128, u8, usize)>,
    key: F,
    policies: Vec<Policy<K>>,
    /// Each origin's key index in every policy.
    ids: HashMap<Origin, Refs, foldhash::fast::FixedState>,
    unmerged: TreeStats,
}

fn ones(bits: u8) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

impl Locator {
    /// Builds the tree of each of `policies` answer policies, `key(p, l)`
    /// being policy `p`'s answer key for location `l` (equal keys: equal
    /// answers). Reads the whole database: run it off the serving threads.
    /// An error when the database's tree cannot be walked.
    pub fn scope_trees<K, F>(&self, policies: usize, key: F) -> Result<ScopeTrees<K>, GeoIpError>
    where
        K: Clone + Eq + Hash,
        F: Fn(usize, &Location) -> K,
    {
        if policies == 0 {
            // Nothing would read the trees: skip the walk.
            return Ok(ScopeTrees {
                trees: Vec::new(),
                unmerged: Default::default(),
            });
        }
        let sources = [self.walk_database(false)?, self.walk_database(true)?];
        self.trees_from(sources, policies, key)
            .map_err(|reason| GeoIpError::Walk {
                path: self
                    .db
                    .as_ref()
                    .map(|db| db.path.clone())
                    .unwrap_or_default(),
                reason,
            })
    }

    /// [`scope_trees`](Self::scope_trees) from the networks `sources`
    /// give (IPv4, IPv6), this locator's overrides laid over them.
    fn trees_from<'l, K, F>(
        &'l self,
        mut sources: [Option<Box<dyn Networks + 'l>>; 2],
        policies: usize,
        key: F,
    ) -> Result<ScopeTrees<K>, String>
    where
        K: Clone + Eq + Hash,
        F: Fn(usize, &Location) -> K,
    {
        let mut policies: Vec<Policy<K>> = (0..policies)
            .map(|_| Policy {
                nodes: Vec::new(),
                keys: Vec::new(),
                interned: HashMap::default(),
            })
            .collect();
        let mut tries: [Vec<Trie>; 2] = Default::default();
        let mut unmerged: [TreeStats; 2] = Default::default();
        for (family, width) in [(0usize, 32u8), (1, 128)] {
            let mut walk = Walk {
                locator: self,
                width,
                nets: sources[family].take(),
                next: None,
                seen_last: None,
                error: None,
                overrides: self
                    .overrides
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.cidr.addr.is_ipv6() == (width == 128))
                    .map(|(i, o)| (super::bits(o.cidr.addr).0, o.cidr.prefix, i))
                    .collect(),
                key: &key,
                // Keys are shared by both families: IPv6 continues IPv4's.
                policies: std::mem::take(&mut policies),
                ids: HashMap::default(),
                unmerged: TreeStats::default(),
            };
            walk.advance();
            let roots = walk.node(0, 0);
            if let Some(reason) = walk.error {
                return Err(reason);
            }
            unmerged[family] = walk.unmerged;
            policies = walk.policies;
            tries[family] = policies
                .iter_mut()
                .zip(roots)
                .map(|(policy, root)| {
                    let mut nodes = std::mem::take(&mut policy.nodes);
                    nodes.shrink_to_fit();
                    Trie { root, nodes }
                })
                .collect();
        }
        let [v4, v6] = tries;
        let trees = v4
            .into_iter()
            .zip(v6)
            .zip(policies)
            .map(|((v4, v6), policy)| ScopeTree {
                v4,
                v6,
                keys: policy.keys,
            })
            .collect();
        Ok(ScopeTrees { trees, unmerged })
    }

    /// The database's networks of one family in ascending order; None
    /// when it has none (no database, or IPv6 in an IPv4 database).
    fn walk_database(&self, v6: bool) -> Result<Option<Box<dyn Networks + '_>>, GeoIpError> {
        let Some(db) = &self.db else { return Ok(None) };
        if v6 && db.reader.metadata().ip_version == 4 {
            return Ok(None);
        }
        let whole = if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        // Aliases (`::ffff:0:0/96`, 6to4, Teredo) answer IPv6 lookups with
        // the IPv4 records: they are part of the IPv6 space as looked up.
        let options = maxminddb::WithinOptions::default().include_aliased_networks();
        let network = ipnetwork_whole(whole);
        let within = db
            .reader
            .within(network, options)
            .map_err(|source| GeoIpError::Decode {
                path: db.path.clone(),
                source,
            })?;
        Ok(Some(Box::new(DbNetworks {
            within,
            width: if v6 { 128 } else { 32 },
            last: None,
        })))
    }
}

/// `0.0.0.0/0` or `::/0` in the type `Reader::within` takes.
fn ipnetwork_whole<N: std::str::FromStr>(whole: IpAddr) -> N
where
    N::Err: std::fmt::Debug,
{
    let text = format!("{whole}/0");
    // Both texts are valid networks.
    text.parse()
        .unwrap_or_else(|e| unreachable!("{text}: {e:?}"))
}

/// One family's database networks with data, in ascending order.
trait Networks {
    /// The next one: its address and prefix in the family's bits (IPv4
    /// in the low 32), and its record's id (equal ids, equal places).
    fn next_network(&mut self) -> Option<Result<(u128, u8, usize), String>>;

    /// The place of the record of the network last given (None: unknown).
    fn place(&mut self) -> Option<Place>;
}

struct DbNetworks<'l> {
    within: maxminddb::Within<'l, Vec<u8>>,
    width: u8,
    last: Option<maxminddb::LookupResult<'l, Vec<u8>>>,
}

impl Networks for DbNetworks<'_> {
    fn next_network(&mut self) -> Option<Result<(u128, u8, usize), String>> {
        let (result, offset) = loop {
            let result = match self.within.next()? {
                Ok(result) => result,
                Err(error) => return Some(Err(error.to_string())),
            };
            // Networks without data are gaps (the walk leaves them out).
            if let Some(offset) = result.offset() {
                break (result, offset);
            }
        };
        let network = match result.network() {
            Ok(network) => network,
            Err(error) => return Some(Err(error.to_string())),
        };
        let found = match (network.ip(), self.width) {
            (IpAddr::V4(v4), 32) => (u128::from(u32::from(v4)), network.prefix()),
            // A record above the IPv4 subtree of an IPv6 tree without one:
            // the whole IPv4 space shares it, as `GeoDb::lookup` says.
            (IpAddr::V6(_), 32) => (0, 0),
            (IpAddr::V4(v4), _) => (u128::from(u32::from(v4)), network.prefix() + 96),
            (IpAddr::V6(v6), _) => (u128::from(v6), network.prefix()),
        };
        self.last = Some(result);
        Some(Ok((found.0, found.1, offset)))
    }

    fn place(&mut self) -> Option<Place> {
        match decode_position(self.last.as_ref()?) {
            Ok(Some((coords, region))) => Some(Place {
                coords,
                region,
                ..Place::default()
            }),
            // As a query treats such a record: an unknown location.
            Ok(None) | Err(_) => None,
        }
    }
}

impl<K: Clone + Eq + Hash, F: Fn(usize, &Location) -> K> Walk<'_, K, F> {
    /// Pulls the next database network, computing its record's keys the
    /// first time the record is seen.
    fn advance(&mut self) {
        self.next = None;
        let Some(nets) = self.nets.as_mut() else {
            return;
        };
        let (addr, prefix, record) = match nets.next_network() {
            None => {
                self.nets = None;
                return;
            }
            Some(Err(reason)) => return self.fail(reason),
            Some(Ok(network)) => network,
        };
        let prefix = prefix.min(self.width);
        let start = addr & !ones(self.width - prefix);
        let last = start | ones(self.width - prefix);
        if self.seen_last.is_some_and(|seen| seen >= start) {
            return self.fail("its networks are not in ascending order".into());
        }
        self.seen_last = Some(last);
        let origin = Origin::Record(record);
        if !self.ids.contains_key(&origin) {
            let shown = match self.width {
                32 => IpAddr::V4(Ipv4Addr::from(start as u32)),
                _ => IpAddr::V6(Ipv6Addr::from(start)),
            };
            let location = Location::from_database(DbAnswer {
                network: (shown, prefix),
                place: nets.place(),
            });
            let ids = self.intern(&location);
            self.ids.insert(origin, ids);
        }
        self.next = Some(Net {
            start,
            last,
            origin,
        });
    }

    fn fail(&mut self, reason: String) {
        self.error.get_or_insert(reason);
        self.nets = None;
        self.next = None;
    }

    fn intern(&mut self, location: &Location) -> Refs {
        let key = &self.key;
        self.policies
            .iter_mut()
            .enumerate()
            .map(|(p, policy)| {
                let k = key(p, location);
                if let Some(&id) = policy.interned.get(&k) {
                    return id;
                }
                let id = policy.keys.len() as u32;
                policy.keys.push(k.clone());
                policy.interned.insert(k, id);
                id
            })
            .collect()
    }

    /// The references for the aligned block of `depth` bits at `start`.
    fn node(&mut self, start: u128, depth: u8) -> Refs {
        let last = start | ones(self.width - depth);
        let splittable = depth < self.width;
        let inner_override = self
            .overrides
            .iter()
            .any(|&(s, p, _)| p > depth && s >= start && s <= last);
        if splittable && inner_override {
            return self.split(start, depth);
        }
        let covering = self
            .overrides
            .iter()
            .find(|&&(s, p, _)| p <= depth && start & !ones(self.width - p) == s);
        if let Some(&(_, _, index)) = covering {
            // Any override wins over the database: skip what lies inside.
            while self.next.is_some_and(|n| n.last <= last) {
                self.advance();
            }
            return self.leaf(Origin::Override(index), depth);
        }
        match self.next {
            Some(n) if n.start <= start => {
                let origin = n.origin;
                if n.last == last {
                    self.advance();
                } else if n.last < last {
                    // Smaller than the block although it starts there.
                    if splittable {
                        return self.split(start, depth);
                    }
                    self.advance();
                }
                self.leaf(origin, depth)
            }
            Some(n) if n.start <= last && splittable => self.split(start, depth),
            _ => self.leaf(Origin::Miss, depth),
        }
    }

    fn split(&mut self, start: u128, depth: u8) -> Refs {
        let left = self.node(start, depth + 1);
        let right = self.node(start | (1u128 << (self.width - depth - 1)), depth + 1);
        if self
            .policies
            .iter()
            .any(|p| p.nodes.len() >= LEAF as usize - 1)
        {
            self.fail("it has more networks than a scope tree holds (2^31)".into());
            return left;
        }
        left.iter()
            .zip(&right)
            .zip(&mut self.policies)
            .map(|((&l, &r), policy)| {
                if l == r && l & LEAF != 0 {
                    return l;
                }
                let at = policy.nodes.len() as u32;
                policy.nodes.push([l, r]);
                at
            })
            .collect()
    }

    fn leaf(&mut self, origin: Origin, depth: u8) -> Refs {
        self.unmerged.leaves += 1;
        self.unmerged.lengths.insert(depth);
        if let Some(ids) = self.ids.get(&origin) {
            return ids.iter().map(|id| id | LEAF).collect();
        }
        let location = match origin {
            Origin::Override(index) => self.locator.overrides[index].location(false),
            _ => Location::from_database(DbAnswer {
                network: if self.width == 32 {
                    (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
                } else {
                    (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
                },
                place: None,
            }),
        };
        let ids = self.intern(&location);
        let refs = ids.iter().map(|id| id | LEAF).collect();
        self.ids.insert(origin, ids);
        refs
    }
}

#[cfg(test)]
impl Locator {
    /// The database's networks with data, IPv4 ones as IPv4, aliases left
    /// out: what the counts of aggregation are over.
    pub(crate) fn database_networks(&self) -> Vec<(IpAddr, u8)> {
        let Some(db) = &self.db else {
            return Vec::new();
        };
        let all = db.reader.networks(maxminddb::WithinOptions::default());
        all.into_iter()
            .flatten()
            .filter_map(|n| n.ok()?.network().ok())
            .map(|n| (n.ip(), n.prefix()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LatLon;

    /// Ascending networks of random lengths with random gaps; runs of
    /// neighbours share a record, as in City databases.
    struct Synthetic {
        networks: Vec<(u128, u8, usize)>,
        at: usize,
    }

    fn synthetic(
        rng: &mut fastrand::Rng,
        count: usize,
        width: u8,
        base: u128,
        prefixes: std::ops::RangeInclusive<u8>,
        records: usize,
    ) -> Vec<(u128, u8, usize)> {
        let mut networks = Vec::with_capacity(count);
        let (mut next, mut record) = (base, 0);
        while networks.len() < count {
            let prefix = rng.u8(prefixes.clone());
            let size = 1u128 << (width - prefix);
            let start = next.div_ceil(size) * size;
            if rng.u8(0..4) == 0 {
                // A gap of the same size.
                next = start + size;
                continue;
            }
            if rng.bool() {
                record = rng.usize(0..records);
            }
            networks.push((start, prefix, record));
            next = start + size;
        }
        networks
    }

    impl Networks for Synthetic {
        fn next_network(&mut self) -> Option<Result<(u128, u8, usize), String>> {
            let network = self.networks.get(self.at)?;
            self.at += 1;
            Some(Ok(*network))
        }

        fn place(&mut self) -> Option<Place> {
            let record = self.networks[self.at - 1].2;
            Some(Place {
                coords: Some(coords(record)),
                ..Place::default()
            })
        }
    }

    fn coords(record: usize) -> LatLon {
        LatLon {
            lat: (record * 7919 % 17_000) as f64 / 100.0 - 85.0,
            lon: (record * 104_729 % 36_000) as f64 / 100.0 - 180.0,
        }
    }

    /// The contract's three data centers, nearest first.
    fn order(location: &Location) -> [u8; 3] {
        let dcs = [(53.35, -6.26), (39.04, -77.49), (1.35, 103.82)];
        let Some(c) = location.coords else {
            return [0, 1, 2];
        };
        let mut order = [0u8, 1, 2];
        let d = |i: u8| {
            let (lat, lon) = dcs[usize::from(i)];
            crate::dns::haversine_km(c, LatLon { lat, lon })
        };
        order.sort_by(|&a, &b| d(a).total_cmp(&d(b)));
        order
    }

    fn peak_rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The cost at scale, on a synthetic database (GeoLite2-City has 3 to
    /// 4 million networks: `GEOLB_SCOPE_NETWORKS=3500000`); every sampled
    /// address's key is checked against the networks themselves.
    #[test]
    fn a_synthetic_database_builds_and_every_sample_matches() {
        let count: usize = std::env::var("GEOLB_SCOPE_NETWORKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let mut rng = fastrand::Rng::with_seed(0x7363_6f70_655f_7379);
        let v4 = synthetic(&mut rng, count * 4 / 5, 32, 1 << 24, 20..=30, 150_000);
        let v6 = synthetic(&mut rng, count / 5, 128, 0x2000 << 112, 29..=64, 150_000);
        let locator = Locator::default();
        let rss_before = peak_rss_kib();
        let started = std::time::Instant::now();
        let sources: [Option<Box<dyn Networks>>; 2] = [
            Some(Box::new(Synthetic {
                networks: v4.clone(),
                at: 0,
            })),
            Some(Box::new(Synthetic {
                networks: v6.clone(),
                at: 0,
            })),
        ];
        let built = locator.trees_from(sources, 1, |_, l| order(l)).unwrap();
        let took = started.elapsed();
        let tree = &built.trees[0];
        let (after4, after6) = (tree.stats(false), tree.stats(true));
        println!(
            "{} networks ({} IPv4, {} IPv6): built in {took:?}; tree {} bytes ({} nodes); \
             peak RSS +{} KiB; entries IPv4 {} -> {}, IPv6 {} -> {}",
            v4.len() + v6.len(),
            v4.len(),
            v6.len(),
            tree.heap_bytes(),
            tree.v4.nodes.len() + tree.v6.nodes.len(),
            peak_rss_kib().saturating_sub(rss_before),
            built.unmerged[0].leaves,
            after4.leaves,
            built.unmerged[1].leaves,
            after6.leaves,
        );
        // Merged: one internal node per two leaves, less one.
        assert_eq!(tree.v4.nodes.len() + 1, after4.leaves);
        assert_eq!(tree.v6.nodes.len() + 1, after6.leaves);
        for (networks, v6) in [(&v4, false), (&v6, true)] {
            for _ in 0..20_000 {
                let &(start, prefix, _) = rng.choice(networks.iter()).unwrap();
                let width = if v6 { 128 } else { 32 };
                let bits = if rng.bool() {
                    start | (rng.u128(..) & ones(width - prefix))
                } else {
                    rng.u128(..) & ones(width)
                };
                let ip = if v6 {
                    IpAddr::V6(Ipv6Addr::from(bits))
                } else {
                    IpAddr::V4(Ipv4Addr::from(bits as u32))
                };
                // The order the network holding `at` gives, if any (they
                // are sorted).
                let order_at = |at: u128| {
                    let place = networks
                        .partition_point(|n| n.0 <= at)
                        .checked_sub(1)
                        .map(|i| networks[i])
                        .filter(|n| at <= (n.0 | ones(width - n.1)))
                        .map(|n| Place {
                            coords: Some(coords(n.2)),
                            ..Place::default()
                        });
                    order(&Location::from_database(DbAnswer {
                        network: (ip, 0),
                        place,
                    }))
                };
                let expected = order_at(bits);
                let (key, scope) = tree.find(ip);
                assert_eq!(*key, expected, "{ip}");
                // The scope's first and last addresses, and some between.
                let low = ones(width - scope);
                let inside = (0..4).map(|_| (bits & !low) | (rng.u128(..) & low));
                for other in [bits & !low, bits | low]
                    .into_iter()
                    .chain(inside.collect::<Vec<_>>())
                {
                    assert_eq!(order_at(other), expected, "{ip}/{scope}");
                }
            }
        }
    }
}
