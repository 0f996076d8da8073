//! Power of two choices: draw two distinct eligible backends at random by
//! weight, send the request to the less loaded one (active per weight).
//!
//! Near least_conn's spread without its O(n) scan, and without the herding
//! that makes many balancers with slightly stale counts all pick the same
//! "least" backend.
//!
//! Draws use prefix sums of the configured weights (a binary search) and
//! reject ineligible backends; after a few rejections (most of the pool down
//! or tried) a linear scan over the eligible backends draws instead, so a
//! pick never loops long and always finds an eligible backend if one exists.

use std::cmp::Ordering as Cmp;

use super::{Balancer, Candidates, ratio_cmp, weight_of};

/// Draws before falling back to a scan: with half of the weight ineligible,
/// 1 pick in 65,536 scans.
const DRAWS: usize = 16;

pub struct RandomTwo {
    /// `cumulative[i]` = sum of the weights of backends 0..=i.
    cumulative: Vec<u64>,
}

impl RandomTwo {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let mut total = 0u64;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                total = total.saturating_add(weight_of(w));
                total
            })
            .collect();
        RandomTwo { cumulative }
    }

    /// An eligible backend other than `except`, drawn by weight.
    fn draw(&self, candidates: &dyn Candidates, except: Option<usize>) -> Option<usize> {
        let count = candidates.count();
        // Only when the pool is the one these sums were built for; the scan
        // below is right for any pool.
        if let Some(&total) = self.cumulative.last()
            && self.cumulative.len() == count
        {
            for _ in 0..DRAWS {
                let r = fastrand::u64(0..total);
                let i = self.cumulative.partition_point(|&s| s <= r);
                if i < count && Some(i) != except && candidates.eligible(i) {
                    return Some(i);
                }
            }
        }
        let open = |i: &usize| Some(*i) != except && candidates.eligible(*i);
        let total = (0..count).filter(open).fold(0u64, |t, i| {
            t.saturating_add(weight_of(candidates.weight(i)))
        });
        if total == 0 {
            return None;
        }
        let mut r = fastrand::u64(0..total);
        let mut last = None;
        for i in (0..count).filter(open) {
            let w = weight_of(candidates.weight(i));
            if r < w {
                return Some(i);
            }
            r -= w;
            last = Some(i);
        }
        // Only reached if eligibility changed between the two passes.
        last
    }
}

impl Balancer for RandomTwo {
    fn pick(&self, candidates: &dyn Candidates, _key: u64) -> Option<usize> {
        let a = self.draw(candidates, None)?;
        let Some(b) = self.draw(candidates, Some(a)) else {
            return Some(a);
        };
        let load = |i: usize| (candidates.active(i), weight_of(candidates.weight(i)));
        let ((active_a, weight_a), (active_b, weight_b)) = (load(a), load(b));
        // On a tie `a` wins: it was drawn by weight, so an idle pool still
        // follows weights.
        match ratio_cmp(active_b, weight_b, active_a, weight_a) {
            Cmp::Less => Some(b),
            Cmp::Equal | Cmp::Greater => Some(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Pool;
    use super::*;

    /// Picks draw from the thread's RNG: seeded here so that a share
    /// check sees the same sample every run rather than failing on an
    /// unlucky one now and then.
    fn counts(rt: &RandomTwo, pool: &Pool, picks: usize) -> Vec<usize> {
        fastrand::seed(0x5eed_0f2c);
        let mut n = vec![0; pool.weights.len()];
        for _ in 0..picks {
            n[rt.pick(pool, 0).expect("an eligible backend")] += 1;
        }
        n
    }

    fn assert_shares(n: &[usize], want: &[f64]) {
        let total: usize = n.iter().sum();
        let sum: f64 = want.iter().sum();
        for (got, w) in n.iter().zip(want) {
            let share = *got as f64 / total as f64;
            let want = w / sum;
            assert!((share - want).abs() < 0.05 * want + 0.005, "{n:?}");
        }
    }

    #[test]
    fn idle_pool_follows_weights() {
        let pool = Pool::new(&[1, 2, 7]);
        let rt = RandomTwo::new(pool.weights.clone());
        assert_shares(&counts(&rt, &pool, 20_000), &[1.0, 2.0, 7.0]);
    }

    #[test]
    fn a_loaded_backend_gets_much_less() {
        let mut pool = Pool::new(&[1; 4]);
        let rt = RandomTwo::new(pool.weights.clone());
        pool.active = vec![40, 3, 3, 3];
        assert_eq!(counts(&rt, &pool, 4000)[0], 0);
        // Per weight: backend 3 (weight 4, 12 active) is as loaded as the
        // others (weight 1, 3 active), backend 0 is not.
        pool.weights = vec![1, 1, 1, 4];
        pool.active = vec![0, 3, 3, 12];
        let n = counts(&rt, &pool, 4000);
        assert!(n[0] > 1500, "{n:?}");
    }

    #[test]
    fn load_spreads_on_skewed_backends() {
        // Requests of random length; backend 0 is 10x slower to finish.
        let mut rng = fastrand::Rng::with_seed(11);
        fastrand::seed(12);
        let mut pool = Pool::new(&[1; 4]);
        let rt = RandomTwo::new(pool.weights.clone());
        let mut n = [0usize; 4];
        for _ in 0..20_000 {
            let i = rt.pick(&pool, 0).expect("an eligible backend");
            n[i] += 1;
            pool.active[i] += 1;
            for (j, a) in pool.active.iter_mut().enumerate() {
                let odds = if j == 0 { 100 } else { 10 };
                *a -= (0..*a).filter(|_| rng.u32(0..odds) == 0).count();
            }
        }
        assert!(n[0] * 3 < n[1], "{n:?}");
    }

    #[test]
    fn one_eligible_backend_is_returned() {
        let mut pool = Pool::new(&[1, 1, 1]);
        let rt = RandomTwo::new(pool.weights.clone());
        pool.eligible = vec![false, true, false];
        assert_eq!(counts(&rt, &pool, 100), vec![0, 100, 0]);
        assert_eq!(counts(&rt, &Pool::new(&[5]), 10), vec![10]);
    }

    #[test]
    fn ineligible_never_picked() {
        let mut pool = Pool::new(&[5, 1, 1, 1]);
        let rt = RandomTwo::new(pool.weights.clone());
        pool.eligible = vec![false, true, true, true];
        assert_shares(&counts(&rt, &pool, 3000), &[0.0, 1.0, 1.0, 1.0]);
        pool.eligible = vec![false; 4];
        assert_eq!(rt.pick(&pool, 0), None);
        assert_eq!(RandomTwo::new([]).pick(&Pool::new(&[]), 0), None);
    }

    #[test]
    fn a_pool_unlike_the_built_one_is_scanned() {
        let rt = RandomTwo::new([1, 1]);
        let pool = Pool::new(&[1, 1, 1, 1]);
        let n = counts(&rt, &pool, 4000);
        assert!(n.iter().all(|&k| k > 800), "{n:?}");
    }
}
