//! A pool for tests: weights, eligibility and active counts set by hand.

use std::net::SocketAddr;

use super::Candidates;
use crate::config::BackendConfig;

pub struct Pool {
    pub weights: Vec<u32>,
    pub eligible: Vec<bool>,
    pub active: Vec<usize>,
}

impl Pool {
    pub fn new(weights: &[u32]) -> Self {
        Pool {
            weights: weights.to_vec(),
            eligible: vec![true; weights.len()],
            active: vec![0; weights.len()],
        }
    }
}

impl Candidates for Pool {
    fn count(&self) -> usize {
        self.weights.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }
    fn eligible(&self, i: usize) -> bool {
        self.eligible[i]
    }
    fn active(&self, i: usize) -> usize {
        self.active[i]
    }
}

/// Backend `i` of a test pool: a distinct address per index.
pub fn backend(i: usize, weight: u32) -> BackendConfig {
    let addr: SocketAddr = format!("10.{}.{}.{}:8080", i >> 16 & 255, i >> 8 & 255, i & 255)
        .parse()
        .expect("a valid address");
    BackendConfig {
        addr,
        weight,
        drain: false,
    }
}

pub fn backends(weights: &[u32]) -> Vec<BackendConfig> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| backend(i, w))
        .collect()
}
