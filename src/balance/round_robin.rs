//! Smooth weighted round robin, as nginx does it: weights are honoured
//! exactly over each cycle, and a heavy backend's turns are spread out
//! (weights 5,1,1 give a a b a c a a, not a a a a a b c).

use std::sync::Mutex;

use super::{Balancer, Candidates};

pub struct SmoothWeightedRoundRobin {
    current: Mutex<Vec<i64>>,
}

impl SmoothWeightedRoundRobin {
    pub fn new(len: usize) -> Self {
        SmoothWeightedRoundRobin {
            current: Mutex::new(vec![0; len]),
        }
    }
}

impl Balancer for SmoothWeightedRoundRobin {
    fn pick(&self, candidates: &dyn Candidates, _key: u64) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
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
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Pool;
    use super::*;

    fn counts(weights: &[u32], eligible: &[bool], picks: usize) -> Vec<usize> {
        let rr = SmoothWeightedRoundRobin::new(weights.len());
        let mut c = Pool::new(weights);
        c.eligible = eligible.to_vec();
        let mut n = vec![0; weights.len()];
        for _ in 0..picks {
            n[rr.pick(&c, 0).expect("an eligible backend")] += 1;
        }
        n
    }

    #[test]
    fn weights_are_honoured() {
        let n = counts(&[1, 2, 7], &[true; 3], 10_000);
        assert_eq!(n, vec![1000, 2000, 7000]);
    }

    #[test]
    fn heavy_backend_turns_are_spread() {
        let rr = SmoothWeightedRoundRobin::new(3);
        let c = Pool::new(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| rr.pick(&c, 0).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn ineligible_backends_are_never_picked() {
        let n = counts(&[3, 1, 1], &[false, true, true], 1000);
        assert_eq!(n, vec![0, 500, 500]);
        let rr = SmoothWeightedRoundRobin::new(2);
        let mut none = Pool::new(&[1, 1]);
        none.eligible = vec![false, false];
        assert_eq!(rr.pick(&none, 0), None);
    }
}
