//! Smooth weighted round robin: weights are honoured exactly over each
//! cycle and a heavy backend's turns are spread out (weights 5,1,1 give
//! a a a b c a a over a cycle of 7, not a a a a a b c).
//!
//! The cycle is laid out once per config: turn `k` of backend `i` falls at
//! virtual time (2k+1) / 2w_i (stride scheduling), and the turns sorted by
//! that time are the cycle. A pick is then an atomic step along it, skipping
//! backends that may not be picked, so its cost does not grow with the pool
//! (nginx's algorithm scans every peer on every pick). A cycle longer than
//! [`MAX_CYCLE`] (huge, uneven weights) falls back to nginx's O(n) scan.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, Candidates};

/// Turns in a precomputed cycle at most (4 MiB of indices).
pub const MAX_CYCLE: u64 = 1 << 20;

pub struct SmoothWeightedRoundRobin {
    inner: Inner,
}

enum Inner {
    Cycle {
        turns: Box<[u32]>,
        cursor: AtomicUsize,
    },
    Scan(Mutex<Vec<i64>>),
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl SmoothWeightedRoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
        let divisor = weights.iter().copied().fold(0, gcd).max(1);
        let total: u64 = weights.iter().map(|w| w / divisor).sum();
        if total > MAX_CYCLE || weights.len() > u32::MAX as usize {
            return SmoothWeightedRoundRobin {
                inner: Inner::Scan(Mutex::new(vec![0; weights.len()])),
            };
        }
        let mut turns: Vec<(u64, u32)> = Vec::with_capacity(total as usize);
        for (i, w) in weights.iter().enumerate() {
            for k in 0..w / divisor {
                turns.push((k, i as u32));
            }
        }
        // Compare (2a+1)/2w_i with (2b+1)/2w_j exactly, in integers.
        turns.sort_by(|&(ka, ia), &(kb, ib)| {
            let left = u128::from(2 * ka + 1) * u128::from(weights[ib as usize]);
            let right = u128::from(2 * kb + 1) * u128::from(weights[ia as usize]);
            left.cmp(&right).then(ia.cmp(&ib))
        });
        SmoothWeightedRoundRobin {
            inner: Inner::Cycle {
                turns: turns.into_iter().map(|(_, i)| i).collect(),
                cursor: AtomicUsize::new(0),
            },
        }
    }
}

impl Balancer for SmoothWeightedRoundRobin {
    fn pick(&self, candidates: &dyn Candidates, _key: u64) -> Option<usize> {
        match &self.inner {
            Inner::Cycle { turns, cursor } => pick_along(turns, cursor, candidates),
            Inner::Scan(current) => scan(current, candidates),
        }
    }
}

fn pick_along(turns: &[u32], cursor: &AtomicUsize, candidates: &dyn Candidates) -> Option<usize> {
    let len = turns.len();
    if len == 0 {
        return None;
    }
    let start = cursor.fetch_add(1, Ordering::Relaxed);
    for step in 0..len {
        let i = turns[(start.wrapping_add(step)) % len] as usize;
        if i < candidates.count() && candidates.eligible(i) {
            // Skipped turns are consumed too, or the backend after a run
            // of unavailable ones would take all of their turns.
            if step > 0 {
                cursor.fetch_add(step, Ordering::Relaxed);
            }
            return Some(i);
        }
    }
    None
}

/// nginx's smooth weighted round robin, O(n) per pick.
fn scan(current: &Mutex<Vec<i64>>, candidates: &dyn Candidates) -> Option<usize> {
    let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
    let len = candidates.count().min(current.len());
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for i in 0..len {
        if !candidates.eligible(i) {
            continue;
        }
        let weight = i64::from(candidates.weight(i));
        current[i] += weight;
        total += weight;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let best = best?;
    current[best] -= total;
    Some(best)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Pool;
    use super::*;

    fn counts(rr: &SmoothWeightedRoundRobin, c: &Pool, picks: usize) -> Vec<usize> {
        let mut n = vec![0; c.weights.len()];
        for _ in 0..picks {
            n[rr.pick(c, 0).expect("an eligible backend")] += 1;
        }
        n
    }

    fn both(weights: &[u32]) -> [SmoothWeightedRoundRobin; 2] {
        [
            SmoothWeightedRoundRobin::new(weights),
            SmoothWeightedRoundRobin {
                inner: Inner::Scan(Mutex::new(vec![0; weights.len()])),
            },
        ]
    }

    #[test]
    fn weights_are_exact_over_cycles() {
        for rr in both(&[1, 2, 7]) {
            assert_eq!(
                counts(&rr, &Pool::new(&[1, 2, 7]), 10_000),
                vec![1000, 2000, 7000]
            );
        }
        // Common factors do not lengthen the cycle.
        let rr = SmoothWeightedRoundRobin::new(&[300, 600]);
        assert!(matches!(&rr.inner, Inner::Cycle { turns, .. } if turns.len() == 3));
    }

    #[test]
    fn heavy_backend_turns_are_spread() {
        let c = Pool::new(&[5, 1, 1]);
        let rr = SmoothWeightedRoundRobin::new(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| rr.pick(&c, 0).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 0, 1, 2, 0, 0]);
        let rr = SmoothWeightedRoundRobin::new(&[1, 1, 1]);
        let seq: Vec<usize> = (0..6).map(|_| rr.pick(&c, 0).unwrap()).collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn unavailable_backends_give_their_turns_evenly() {
        for rr in both(&[3, 1, 1]) {
            let mut c = Pool::new(&[3, 1, 1]);
            c.eligible = vec![false, true, true];
            assert_eq!(counts(&rr, &c, 1000), vec![0, 500, 500]);
        }
        let mut c = Pool::new(&[1, 1, 1, 1]);
        c.eligible = vec![true, false, true, true];
        let rr = SmoothWeightedRoundRobin::new(&[1, 1, 1, 1]);
        assert_eq!(counts(&rr, &c, 3000), vec![1000, 0, 1000, 1000]);
        for rr in both(&[1, 1]) {
            let mut none = Pool::new(&[1, 1]);
            none.eligible = vec![false, false];
            assert_eq!(rr.pick(&none, 0), None);
        }
    }

    #[test]
    fn huge_uneven_weights_fall_back_to_the_scan() {
        let rr = SmoothWeightedRoundRobin::new(&[1_000_000, 999_999, 3]);
        assert!(matches!(rr.inner, Inner::Scan(_)));
        let c = Pool::new(&[1_000_000, 999_999, 3]);
        let n = counts(&rr, &c, 2_000_002);
        assert_eq!(n, vec![1_000_000, 999_999, 3]);
        assert!(
            SmoothWeightedRoundRobin::new(&[])
                .pick(&Pool::new(&[]), 0)
                .is_none()
        );
    }
}
