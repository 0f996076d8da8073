//! The ECS scope trees of the geo names (see `geoip::scope`): one per
//! distinct answer policy, keyed by [`geo::candidate_order`], built with
//! the data off the serving threads and read by every geo answer.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::geo::{self, Datacenter, GeoName};
use crate::geoip::{GeoIpError, Locator, ScopeTree, TreeStats};

pub(crate) struct Scopes {
    /// Geo name (by index) -> its policy's tree: names with the same
    /// candidates share one.
    policy_of: Vec<usize>,
    trees: Vec<ScopeTree<geo::Candidates>>,
    /// IPv4 and IPv6 before aggregation, for the counts in the README.
    pub unmerged: [TreeStats; 2],
    pub built_in: Duration,
}

impl Scopes {
    pub fn build(
        geo: &[GeoName],
        dcs: &[Datacenter],
        locator: &Locator,
    ) -> Result<Scopes, GeoIpError> {
        let started = Instant::now();
        let mut representatives: Vec<usize> = Vec::new();
        let policy_of = geo
            .iter()
            .enumerate()
            .map(|(i, g)| {
                // Names with maps have policies of their own (their
                // entries are not compared).
                let same = |&r: &usize| {
                    geo[r].candidates == g.candidates
                        && geo[r].maps.entries.is_empty()
                        && g.maps.entries.is_empty()
                };
                representatives.iter().position(same).unwrap_or_else(|| {
                    representatives.push(i);
                    representatives.len() - 1
                })
            })
            .collect();
        let built = locator.scope_trees(representatives.len(), |p, location| {
            geo::candidate_order(&geo[representatives[p]], dcs, location)
        })?;
        let scopes = Scopes {
            policy_of,
            trees: built.trees,
            unmerged: built.unmerged,
            built_in: started.elapsed(),
        };
        if !scopes.trees.is_empty() && tracing::enabled!(tracing::Level::DEBUG) {
            let after: usize = scopes
                .trees
                .iter()
                .map(|t| t.stats(false).leaves + t.stats(true).leaves)
                .sum();
            tracing::debug!(
                policies = scopes.trees.len(),
                networks_before = scopes.unmerged[0].leaves + scopes.unmerged[1].leaves,
                networks_after = after,
                bytes = scopes.heap_bytes(),
                took = ?scopes.built_in,
                "ECS scope trees built"
            );
        }
        Ok(scopes)
    }

    /// Geo name `index`'s candidates for `ip`, and how many of `ip`'s
    /// leading bits share them.
    pub fn find(&self, index: usize, ip: IpAddr) -> (&geo::Candidates, u8) {
        self.trees[self.policy_of[index]].find(ip)
    }

    /// Geo name `index`'s tree.
    #[cfg(test)]
    pub fn tree(&self, index: usize) -> &ScopeTree<geo::Candidates> {
        &self.trees[self.policy_of[index]]
    }

    pub fn heap_bytes(&self) -> usize {
        self.trees.iter().map(ScopeTree::heap_bytes).sum::<usize>()
            + self.policy_of.capacity() * size_of::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::config::{Cidr, GeoNetwork, LatLon};
    use crate::dns::{AllUp, DnsData};
    use crate::geoip::GeoDb;

    fn test_db() -> Arc<GeoDb> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/GeoIP2-City-Test.mmdb");
        Arc::new(GeoDb::open(&path).unwrap())
    }

    fn network(cidr: &str, lat: f64, lon: f64) -> GeoNetwork {
        let (addr, prefix) = cidr.split_once('/').unwrap();
        GeoNetwork {
            cidr: Cidr {
                addr: addr.parse().unwrap(),
                prefix: prefix.parse().unwrap(),
            },
            location: LatLon { lat, lon },
            country: None,
            continent: None,
        }
    }

    /// The answer tests' data with overrides nested in each other and in
    /// database networks, of both families and IPv4-mapped.
    fn data_with_overrides() -> DnsData {
        let data = crate::dns::answer::tests::data(Arc::new(AllUp));
        let locator = Locator::new(
            Some(test_db()),
            &[
                network("10.0.0.0/8", 50.11, 8.68),
                network("10.1.2.0/24", 1.3, 103.8),
                network("81.2.69.128/26", 35.7, 139.7),
                network("81.2.69.161/32", 40.7, -74.0),
                network("2001:480:10:1::/64", 51.5, -0.1),
                network("::ffff:214.0.0.0/104", 53.3, -6.3),
                network("2a02:e700::/32", 1.3, 103.8),
            ],
        );
        data.with_locator(Arc::new(locator)).unwrap()
    }

    /// Addresses near the test table's networks and overrides, and random
    /// ones, of both families and IPv4-mapped.
    fn random_address(rng: &mut fastrand::Rng) -> IpAddr {
        const NEAR_V4: [[u8; 4]; 7] = [
            [81, 2, 69, 160],
            [216, 160, 83, 56],
            [214, 0, 0, 1],
            [149, 101, 100, 1],
            [2, 3, 3, 1],
            [10, 1, 2, 3],
            [89, 160, 20, 112],
        ];
        const NEAR_V6: [u128; 4] = [
            0x2001_0480_0010_0000 << 64,
            0x2a02_e700 << 96,
            0x2002_5102_45a0 << 80,
            0x2001_0218 << 96,
        ];
        let v4 = |rng: &mut fastrand::Rng| {
            let base = u32::from(Ipv4Addr::from(*rng.choice(&NEAR_V4).unwrap()));
            let keep = rng.u32(0..=32);
            let low = if keep == 32 { 0 } else { u32::MAX >> keep };
            (base & !low) | (rng.u32(..) & low)
        };
        match rng.u8(0..6) {
            0 => IpAddr::V4(Ipv4Addr::from(rng.u32(..))),
            1 | 2 => IpAddr::V4(Ipv4Addr::from(v4(rng))),
            3 => IpAddr::V6(Ipv4Addr::from(v4(rng)).to_ipv6_mapped()),
            4 => IpAddr::V6(Ipv6Addr::from(rng.u128(..))),
            _ => {
                let keep = rng.u32(0..=128);
                let low = if keep == 128 { 0 } else { u128::MAX >> keep };
                let base = *rng.choice(&NEAR_V6).unwrap();
                IpAddr::V6(Ipv6Addr::from((base & !low) | (rng.u128(..) & low)))
            }
        }
    }

    /// `ip` with every bit past the first `keep` (of its family) random.
    fn inside(rng: &mut fastrand::Rng, ip: IpAddr, keep: u8) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let low = u32::MAX.checked_shr(keep.into()).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from((u32::from(v4) & !low) | (rng.u32(..) & low)))
            }
            IpAddr::V6(v6) => {
                let low = u128::MAX.checked_shr(keep.into()).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(
                    (u128::from(v6) & !low) | (rng.u128(..) & low),
                ))
            }
        }
    }

    /// Never wider than correct: every address inside the scope a tree
    /// gives (sampled) has the queried address's candidate order, which is
    /// the one the database and overrides give, and the scope is never
    /// narrower than the network that decided.
    /// A name with map entries by continent, country and subdivision: its
    /// tree keys by the entry that decides, so it widens only as far as
    /// every address under it matches the same entry and order.
    #[test]
    fn map_entries_aggregate_only_where_the_same_entry_decides() {
        let data = crate::dns::answer::tests::data_with(
            crate::dns::answer::tests::POLICIES,
            Arc::new(AllUp),
        );
        let (c, locator) = (&data.compiled, data.locator());
        let g = data.geo_index("mapped.mysite.com").unwrap();
        assert!(c.geo[g].maps.entries.len() == 3 && !c.geo[g].maps.has_cidrs());
        let candidates_of =
            |ip: IpAddr| geo::candidate_order(&c.geo[g], &c.datacenters, &locator.position(ip));
        // Milton, WA: its subdivision's entry, whatever is nearest.
        let milton: IpAddr = "216.160.83.56".parse().unwrap();
        let (found, _) = data.scopes.find(g, milton);
        assert_eq!(found.entry, Some(2), "{found:?}");
        let mut rng = fastrand::Rng::with_seed(0x6d61_7073);
        for _ in 0..crate::proptest_cases(5_000) {
            let ip = random_address(&mut rng);
            let (found, scope) = data.scopes.find(g, ip);
            assert_eq!(found, &candidates_of(ip), "{ip}");
            assert!(scope <= locator.position(ip).prefix_len, "{ip}");
            for _ in 0..4 {
                let other = inside(&mut rng, ip, scope);
                assert_eq!(found, &candidates_of(other), "{ip}/{scope} holds {other}");
            }
        }
    }

    #[test]
    fn proptest_scopes_are_never_wider_than_correct() {
        let data = data_with_overrides();
        let (c, locator) = (&data.compiled, data.locator());
        let order_of = |g: usize, ip: IpAddr| {
            geo::candidate_order(&c.geo[g], &c.datacenters, &locator.position(ip))
        };
        let mut rng = fastrand::Rng::with_seed(0x6563_735f_7363_6f70);
        let cases = crate::proptest_cases(20_000);
        let mut widened = 0;
        for _ in 0..cases {
            let ip = random_address(&mut rng);
            let decided = locator.position(ip).prefix_len;
            for g in 0..c.geo.len() {
                let (order, scope) = data.scopes.find(g, ip);
                assert_eq!(order, &order_of(g, ip), "{ip} name {g}");
                assert!(scope <= decided, "{ip}: /{scope} narrower than /{decided}");
                widened += usize::from(scope < decided);
                for _ in 0..4 {
                    let other = inside(&mut rng, ip, scope);
                    assert_eq!(
                        order,
                        &order_of(g, other),
                        "{ip}/{scope} holds {other}, answered otherwise (name {g})"
                    );
                }
            }
        }
        assert!(widened > 0, "no scope was ever widened");
    }

    fn scope_of(data: &DnsData, g: usize, ip: &str) -> u8 {
        data.scopes.find(g, ip.parse().unwrap()).1
    }

    /// The 1.1.1.1 example: on the test table, London (81.2.69.160/27)
    /// and the empty space around it both get eu-west first for a name
    /// listing eu-west first, so the scope is the whole empty /4 around it
    /// where the database alone said /27; a name listing us-east first
    /// answers London differently from its neighbours and keeps /27.
    #[test]
    fn neighbours_with_one_answer_share_a_wider_scope_and_overrides_still_narrow() {
        let data = crate::dns::answer::tests::data(Arc::new(AllUp));
        let apex = data.geo_index("apex.test").unwrap();
        let api = data.geo_index("api.mysite.com").unwrap();
        assert_eq!(
            data.locator()
                .position("81.2.69.160".parse().unwrap())
                .prefix_len,
            27
        );
        assert_eq!(scope_of(&data, apex, "81.2.69.160"), 4);
        assert_eq!(scope_of(&data, api, "81.2.69.160"), 27);
        assert_eq!(scope_of(&data, apex, "::ffff:81.2.69.160"), 100);

        // gdnsd's example, on the test table: 1.1.1.1 is in no network,
        // the empty one around it being 1.0.0.0/8; 0.0.0.0/8 is empty too,
        // and both get the configured order: /7.
        let miss = data.locator().position("1.1.1.1".parse().unwrap());
        assert_eq!(
            (miss.source, miss.prefix_len),
            (crate::geoip::LocationSource::Miss, 8)
        );
        assert_eq!(scope_of(&data, api, "1.1.1.1"), 7);

        let data = data_with_overrides();
        // The /32 override inside the /26 override inside London's /27.
        assert_eq!(scope_of(&data, apex, "81.2.69.161"), 32);
        assert_eq!(scope_of(&data, api, "81.2.69.161"), 32);
        assert_eq!(scope_of(&data, apex, "81.2.69.160"), 32);
    }

    /// The counts in the README's "ECS scope aggregation": over the test
    /// table, the (network, scope) entries a resolver covering each whole
    /// family would keep, and the distinct scope lengths, before and after.
    #[test]
    fn counts_before_and_after_aggregation() {
        let data = crate::dns::answer::tests::data(Arc::new(AllUp));
        let scopes = &data.scopes;
        let networks = data.locator().database_networks();
        let lengths = |s: &BTreeSet<u8>| s.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
        println!(
            "test database: {} networks with data; trees built in {:?}, {} bytes",
            networks.len(),
            scopes.built_in,
            scopes.heap_bytes()
        );
        for (family, name) in [(0, "IPv4"), (1, "IPv6")] {
            let before = &scopes.unmerged[family];
            println!(
                "{name} before: {} entries over the whole space, {} lengths ({})",
                before.leaves,
                before.lengths.len(),
                lengths(&before.lengths)
            );
        }
        for g in 0..data.geo_count() {
            let tree = scopes.tree(g);
            let geo = &data.compiled.geo[g];
            for (family, name) in [(0, "IPv4"), (1, "IPv6")] {
                let before = &scopes.unmerged[family];
                let after = tree.stats(family == 1);
                // Over the database's own networks: one entry each before.
                let family_networks: Vec<_> = networks
                    .iter()
                    .filter(|(ip, _)| ip.is_ipv6() == (family == 1))
                    .collect();
                let entries: BTreeSet<(IpAddr, u8)> = family_networks
                    .iter()
                    .map(|&&(ip, _)| {
                        let scope = scopes.find(g, ip).1;
                        (inside_zero(ip, scope), scope)
                    })
                    .collect();
                let entry_lengths: BTreeSet<u8> = entries.iter().map(|e| e.1).collect();
                let db_lengths: BTreeSet<u8> = family_networks.iter().map(|n| n.1).collect();
                println!(
                    "{} {name}: whole space {} -> {} entries, lengths {} -> {} ({}); \
                     database networks {} -> {} entries, lengths {} -> {} ({})",
                    geo.name,
                    before.leaves,
                    after.leaves,
                    before.lengths.len(),
                    after.lengths.len(),
                    lengths(&after.lengths),
                    family_networks.len(),
                    entries.len(),
                    db_lengths.len(),
                    entry_lengths.len(),
                    lengths(&entry_lengths),
                );
                assert!(after.leaves <= before.leaves, "{}", geo.name);
                assert!(entries.len() <= family_networks.len(), "{}", geo.name);
            }
            let v4 = tree.stats(false).leaves;
            assert!(
                v4 < scopes.unmerged[0].leaves,
                "{}: nothing merged",
                geo.name
            );
        }
    }

    fn inside_zero(ip: IpAddr, keep: u8) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let low = u32::MAX.checked_shr(keep.into()).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & !low))
            }
            IpAddr::V6(v6) => {
                let low = u128::MAX.checked_shr(keep.into()).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !low))
            }
        }
    }
}
