//! Least connections, weighted: the backend with the fewest active requests
//! per unit of weight, as nginx's `least_conn` does it.
//!
//! Ties are broken by a weighted rotation over the tied backends. Ties are
//! the common case on a lightly loaded pool (every active count is 0 when
//! requests do not overlap), and a plain "first minimum" would send all of
//! that traffic to backend 0; the rotation spreads it in proportion to
//! weight instead, so weights hold at low load too, and equal backends
//! share evenly.
//!
//! The rotation is one atomic counter, not per-backend state under a lock
//! as round_robin keeps, so picks stay lock-free. The price: turns come in
//! runs (weights 5,1,1 tied give a a a a a b c, not a a b a c a a), and the
//! rotation is exact only while the tie set stays the same; under load a
//! backend leaves the tie as soon as it takes a request, so both fade.

use std::cmp::Ordering as Cmp;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Balancer, Candidates, ratio_cmp, weight_of};

#[derive(Default)]
pub struct LeastConn {
    cursor: AtomicU64,
}

impl LeastConn {
    pub fn new() -> Self {
        LeastConn::default()
    }
}

impl Balancer for LeastConn {
    fn pick(&self, candidates: &dyn Candidates, _key: u64) -> Option<usize> {
        let count = candidates.count();
        // (index, active, weight) of the first least-loaded backend.
        let mut best: Option<(usize, usize, u64)> = None;
        let mut tied = 0usize;
        let mut tied_weight = 0u64;
        for i in 0..count {
            if !candidates.eligible(i) {
                continue;
            }
            let active = candidates.active(i);
            let weight = weight_of(candidates.weight(i));
            let order = best.map_or(Cmp::Less, |(_, a, w)| ratio_cmp(active, weight, a, w));
            match order {
                Cmp::Less => {
                    best = Some((i, active, weight));
                    tied = 1;
                    tied_weight = weight;
                }
                Cmp::Equal => {
                    tied += 1;
                    tied_weight = tied_weight.saturating_add(weight);
                }
                Cmp::Greater => {}
            }
        }
        let (first, best_active, best_weight) = best?;
        if tied == 1 {
            return Some(first);
        }
        // Active counts move under us (other requests start and finish), so
        // the second pass re-reads them; a backend that left the tie is
        // skipped, and if the whole tie dissolved the first pass's answer is
        // still a fine one.
        let mut position = self.cursor.fetch_add(1, Ordering::Relaxed) % tied_weight;
        for i in first..count {
            if !candidates.eligible(i) {
                continue;
            }
            let weight = weight_of(candidates.weight(i));
            if ratio_cmp(candidates.active(i), weight, best_active, best_weight) != Cmp::Equal {
                continue;
            }
            if position < weight {
                return Some(i);
            }
            position -= weight;
        }
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Pool;
    use super::*;

    /// Runs `picks` requests through `pool`: each pick starts a request on
    /// the chosen backend; `finish` decides which requests end before the
    /// next pick.
    fn counts(pool: &mut Pool, picks: usize, mut finish: impl FnMut(&mut Pool)) -> Vec<usize> {
        let lc = LeastConn::new();
        let mut n = vec![0; pool.weights.len()];
        for _ in 0..picks {
            let i = lc.pick(pool, 0).expect("an eligible backend");
            n[i] += 1;
            pool.active[i] += 1;
            finish(pool);
        }
        n
    }

    #[test]
    fn idle_pool_follows_weights_by_rotation() {
        let mut pool = Pool::new(&[1, 2, 1]);
        let n = counts(&mut pool, 4000, |p| p.active.fill(0));
        assert_eq!(n, vec![1000, 2000, 1000]);
        let mut pool = Pool::new(&[1; 5]);
        let n = counts(&mut pool, 5000, |p| p.active.fill(0));
        assert_eq!(n, vec![1000; 5]);
    }

    #[test]
    fn weights_hold_under_load() {
        // 100 requests in flight; each step one starts and a random one of
        // those in flight ends, so every request lasts a random time with
        // the same mean, and a backend's throughput is its active count over
        // that mean: picks follow weights only if active counts do.
        let mut rng = fastrand::Rng::with_seed(7);
        let mut pool = Pool::new(&[1, 2, 5]);
        let n = counts(&mut pool, 20_000, |p| {
            let in_flight: usize = p.active.iter().sum();
            if in_flight > 100 {
                let mut r = rng.usize(0..in_flight);
                for a in p.active.iter_mut() {
                    if r < *a {
                        *a -= 1;
                        break;
                    }
                    r -= *a;
                }
            }
        });
        let total: usize = n.iter().sum();
        for (i, w) in [1.0, 2.0, 5.0].iter().enumerate() {
            let share = n[i] as f64 / total as f64;
            let want = w / 8.0;
            assert!((share - want).abs() < 0.03 * want + 0.005, "{n:?}");
        }
    }

    #[test]
    fn new_work_avoids_a_backend_holding_long_requests() {
        let mut pool = Pool::new(&[1, 1, 1]);
        pool.active[0] = 50;
        // Short requests: they end before the next pick.
        let n = counts(&mut pool, 3000, |p| {
            p.active[1] = 0;
            p.active[2] = 0;
        });
        assert_eq!(n, vec![0, 1500, 1500]);
    }

    #[test]
    fn ineligible_never_picked() {
        let lc = LeastConn::new();
        let mut pool = Pool::new(&[1, 1, 1]);
        pool.eligible = vec![true, false, true];
        pool.active = vec![5, 0, 5];
        for _ in 0..100 {
            assert_ne!(lc.pick(&pool, 0), Some(1));
        }
        pool.eligible = vec![false; 3];
        assert_eq!(lc.pick(&pool, 0), None);
        assert_eq!(lc.pick(&Pool::new(&[]), 0), None);
    }

    #[test]
    fn zero_weight_does_not_divide_by_zero() {
        let lc = LeastConn::new();
        let mut pool = Pool::new(&[0, 0]);
        pool.active = vec![3, usize::MAX];
        assert_eq!(lc.pick(&pool, 0), Some(0));
    }
}
