//! Backend selection: pure code, no I/O.
//!
//! A balancer sees a pool through [`Candidates`] (weights, which backends
//! may be picked now, their active counts) and returns an index. Health,
//! drain and "already tried by this request" are folded into `eligible` by
//! the caller, so every algorithm skips them the same way.

mod round_robin;

pub use round_robin::SmoothWeightedRoundRobin;

use crate::config::Balance;

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
}

/// The balancer for a pool of `weights.len()` backends.
pub fn build(balance: Balance, weights: &[u32]) -> Box<dyn Balancer> {
    match balance {
        Balance::RoundRobin | Balance::LeastConn | Balance::RandomTwo | Balance::Maglev => {
            Box::new(SmoothWeightedRoundRobin::new(weights.len()))
        }
    }
}
