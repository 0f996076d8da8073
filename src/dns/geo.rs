//! Choosing data centers for a geo name: distance, availability, fail-open.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use hickory_proto::rr::{LowerName, Name};
use metrics::Counter;
use smallvec::SmallVec;

use crate::config::{DatacenterConfig, LatLon};
use crate::geoip::Location;

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
    pub drain: bool,
}

impl Datacenter {
    pub fn from_config(dc: &DatacenterConfig) -> Datacenter {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for addr in &dc.addresses {
            match addr {
                IpAddr::V4(a) => v4.push(*a),
                IpAddr::V6(a) => match a.to_ipv4_mapped() {
                    Some(mapped) => v4.push(mapped),
                    None => v6.push(*a),
                },
            }
        }
        Datacenter {
            name: dc.name.clone(),
            location: dc.location,
            v4,
            v6,
            drain: dc.drain,
        }
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
    /// `geolb_dns_geo_answers_total{name, datacenter}`, one per candidate,
    /// resolved on first use (after the recorder is installed).
    pub counters: Vec<OnceLock<Counter>>,
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

#[derive(Debug, Clone)]
pub(crate) struct Ranking {
    /// Every candidate (index into the data centers), nearest first; the
    /// configured order when the location is unknown. With its distance.
    pub order: SmallVec<[(usize, Option<f64>); 8]>,
    /// The chosen ones, best first: at most `answers`, all from one tier.
    pub chosen: SmallVec<[usize; 4]>,
    pub tier: Tier,
}

/// The chosen data centers of one answer, and the tier they came from.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    /// Best first: at most `answers`, all from one tier.
    pub chosen: SmallVec<[usize; 4]>,
    pub tier: Tier,
}

/// What a geo name's answer for `location` depends on before health: its
/// candidates in the order they are tried (equal orders give equal answers
/// under any health state). The ECS scope trees are built from it, so
/// whatever a policy's answer comes to depend on must show here.
pub(crate) fn candidate_order(
    geo: &GeoName,
    dcs: &[Datacenter],
    location: &Location,
) -> SmallVec<[usize; 8]> {
    by_distance(&geo.candidates, dcs, location.coords)
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

/// `candidates` nearest first, with their distances; the configured order
/// when the location is unknown.
fn by_distance(
    candidates: &[usize],
    dcs: &[Datacenter],
    coords: Option<LatLon>,
) -> SmallVec<[(usize, Option<f64>); 8]> {
    let mut order: SmallVec<[(usize, Option<f64>); 8]> = candidates
        .iter()
        .map(|&i| (i, coords.map(|c| haversine_km(c, dcs[i].location))))
        .collect();
    if coords.is_some() {
        // Stable: equal distances keep the configured order.
        order.sort_by(|a, b| a.1.unwrap_or(0.0).total_cmp(&b.1.unwrap_or(0.0)));
    }
    order
}

/// Ranks `candidates` once, with distances (for people: `geolb lookup`);
/// the choice is [`choose`]'s.
pub(crate) fn rank(
    candidates: &[usize],
    dcs: &[Datacenter],
    coords: Option<LatLon>,
    answers: usize,
    state: impl Fn(usize) -> DcState,
) -> Ranking {
    let order = by_distance(candidates, dcs, coords);
    let indexes: SmallVec<[usize; 8]> = order.iter().map(|&(i, _)| i).collect();
    let Choice { chosen, tier } = choose(&indexes, answers, state);
    Ranking {
        order,
        chosen,
        tier,
    }
}

/// Takes `answers` from `order`: the tier is the first non-empty one of
/// available / undrained / all, and answers come from it only, so a down
/// data center is never given out beside an available one.
pub(crate) fn choose(order: &[usize], answers: usize, state: impl Fn(usize) -> DcState) -> Choice {
    let states: SmallVec<[DcState; 8]> = order.iter().map(|&i| state(i)).collect();
    let tier = if states.iter().any(|s| s.available()) {
        Tier::Available
    } else if states.iter().any(|s| !s.drain) {
        Tier::Undrained
    } else {
        Tier::All
    };
    let eligible = |s: &DcState| match tier {
        Tier::Available => s.available(),
        Tier::Undrained => !s.drain,
        Tier::All => true,
    };
    let chosen = order
        .iter()
        .zip(&states)
        .filter(|(_, s)| eligible(s))
        .map(|(&i, _)| i)
        .take(answers)
        .collect();
    Choice { chosen, tier }
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
            drain: false,
        }
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
        assert_eq!(r.order.iter().map(|o| o.0).collect::<Vec<_>>(), [0, 1, 2]);
        let r = rank(&[1, 0, 2], &dcs, Some(MILTON), 2, all_up);
        assert_eq!(r.chosen.as_slice(), [1, 0]);
        let r = rank(&[1, 0, 2], &dcs, None, 2, all_up);
        assert_eq!(r.chosen.as_slice(), [1, 0]);
        assert!(r.order.iter().all(|o| o.1.is_none()));
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
            pools: vec![],
            check: None,
            drain: false,
            always_up: true,
        };
        let dc = Datacenter::from_config(&config);
        assert_eq!(dc.v4.len(), 2);
        assert_eq!(dc.v6.len(), 1);
    }
}
