//! Backend selection: pure code, no I/O.
//!
//! A balancer sees a pool through [`Candidates`] (weights, which backends
//! may be picked now, their active counts) and returns an index. Health,
//! drain and "already tried by this request" are folded into `eligible` by
//! the caller, so every algorithm skips them the same way.
//!
//! | `balance`     | type                        | per pick            |
//! |---------------|-----------------------------|---------------------|
//! | `round_robin` | [`SmoothWeightedRoundRobin`] | O(1) expected, lock-free |
//! | `least_conn`  | [`LeastConn`]               | O(n), lock-free     |
//! | `random_two`  | [`RandomTwo`]               | O(log n) expected   |
//! | `maglev`      | [`Maglev`]                  | O(1) expected       |

mod least_conn;
mod maglev;
mod random_two;
mod round_robin;
#[cfg(test)]
mod test_support;

pub use least_conn::LeastConn;
pub use maglev::Maglev;
pub use random_two::RandomTwo;
pub use round_robin::SmoothWeightedRoundRobin;

use siphasher::sip::SipHasher13;

use crate::config::{BackendConfig, Balance};

pub trait Candidates {
    fn count(&self) -> usize;
    fn weight(&self, index: usize) -> u32;
    fn eligible(&self, index: usize) -> bool;
    fn active(&self, index: usize) -> usize;
}

pub trait Balancer: Send + Sync {
    /// An eligible backend's index, or None if no backend is eligible.
    /// `key` is the request's hash key, for algorithms that use one.
    fn pick(&self, candidates: &dyn Candidates, key: u64) -> Option<usize>;

    /// Whether `pick` uses its key: callers compute one only then.
    fn hashes(&self) -> bool {
        false
    }
}

/// The balancer for a pool of `backends.len()` backends, indexed in the
/// same order.
pub fn build(balance: Balance, backends: &[BackendConfig]) -> Box<dyn Balancer> {
    match balance {
        Balance::RoundRobin => Box::new(SmoothWeightedRoundRobin::new(
            &backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        )),
        Balance::LeastConn => Box::new(LeastConn::new()),
        Balance::RandomTwo => Box::new(RandomTwo::new(backends.iter().map(|b| b.weight))),
        Balance::Maglev => Box::new(Maglev::new(backends)),
    }
}

/// SipHash-1-3 keys for [`hash_key`]. Fixed, not random per process, so that
/// every geolb with the same config sends a key to the same backend; changing
/// them remaps every key of every `maglev` pool.
const KEY_HASH_KEYS: (u64, u64) = (0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344);

/// The hash key of a request attribute (client IP octets, a header or cookie
/// value), for [`Balancer::pick`]. Stable across processes, machines and
/// releases, unlike `std`'s `RandomState`.
/// The key of a client address: IPv4-mapped IPv6 hashes as IPv4, so a
/// client keeps its backend whichever way it reached us.
pub fn client_ip_key(client: std::net::IpAddr) -> u64 {
    match client.to_canonical() {
        std::net::IpAddr::V4(a) => hash_key(&a.octets()),
        std::net::IpAddr::V6(a) => hash_key(&a.octets()),
    }
}

pub fn hash_key(bytes: &[u8]) -> u64 {
    SipHasher13::new_with_keys(KEY_HASH_KEYS.0, KEY_HASH_KEYS.1).hash(bytes)
}

/// `weight` as the algorithms use it: a zero weight (which validation never
/// lets through) counts as 1 rather than dividing by zero or starving.
fn weight_of(weight: u32) -> u64 {
    u64::from(weight.max(1))
}

/// Whether `a` is less loaded than `b`: active_a / weight_a <
/// active_b / weight_b, compared as cross products (no floats, no overflow).
fn ratio_cmp(active_a: usize, weight_a: u64, active_b: usize, weight_b: u64) -> std::cmp::Ordering {
    let lhs = active_a as u128 * u128::from(weight_b);
    let rhs = active_b as u128 * u128::from(weight_a);
    lhs.cmp(&rhs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_key_is_fixed() {
        // Pinned: a change here remaps every maglev key of every deployment.
        assert_ne!(hash_key(b"10.0.0.1"), hash_key(b"10.0.0.2"));
        assert_eq!(hash_key(b"10.0.0.1"), PINNED_10_0_0_1);
    }

    const PINNED_10_0_0_1: u64 = 5_135_400_051_690_582_350;

    #[test]
    fn ratio_compares_without_floats() {
        use std::cmp::Ordering::*;
        assert_eq!(ratio_cmp(1, 2, 1, 1), Less);
        assert_eq!(ratio_cmp(2, 2, 1, 1), Equal);
        assert_eq!(ratio_cmp(usize::MAX, 1, usize::MAX, 2), Greater);
    }

    #[test]
    fn build_handles_empty_pools() {
        let c = test_support::Pool::new(&[]);
        for balance in [
            Balance::RoundRobin,
            Balance::LeastConn,
            Balance::RandomTwo,
            Balance::Maglev,
        ] {
            assert_eq!(build(balance, &[]).pick(&c, 7), None, "{balance:?}");
        }
    }
}
