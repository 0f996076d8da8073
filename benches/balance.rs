//! Nanoseconds per pick for each balancer, on idle pools where every
//! backend is eligible, and the time to build a Maglev table.
//!
//! `cargo bench --bench balance -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use geolb::balance::{self, Candidates, Maglev};
use geolb::config::{BackendConfig, Balance};

const SIZES: [usize; 3] = [3, 100, 10_000];

/// A pool as the proxy presents one: per-backend lookups, nothing shared.
struct Pool {
    weights: Vec<u32>,
    eligible: Vec<bool>,
    active: Vec<usize>,
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

fn backends(count: usize) -> Vec<BackendConfig> {
    (0..count)
        .map(|i| {
            let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080));
            BackendConfig {
                addr,
                weight: 1,
                drain: false,
            }
        })
        .collect()
}

fn pool(backends: &[BackendConfig]) -> Pool {
    Pool {
        weights: backends.iter().map(|b| b.weight).collect(),
        eligible: vec![true; backends.len()],
        active: vec![0; backends.len()],
    }
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for (name, balance) in [
        ("round_robin", Balance::RoundRobin),
        ("least_conn", Balance::LeastConn),
        ("random_two", Balance::RandomTwo),
        ("maglev", Balance::Maglev),
    ] {
        for size in SIZES {
            let config = backends(size);
            let pool = pool(&config);
            let balancer = balance::build(balance, &config);
            // Keys vary so that Maglev's lookups hit the table's slots at
            // random, as real clients do, not one cached slot.
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    black_box(balancer.pick(black_box(&pool), key))
                })
            });
        }
    }
    group.finish();
}

fn maglev_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    group.sample_size(10);
    for size in [3, 10_000] {
        let config = backends(size);
        group.bench_with_input(BenchmarkId::from_parameter(size), &config, |b, config| {
            b.iter(|| Maglev::new(black_box(config)))
        });
    }
    group.finish();
}

fn hash_key(c: &mut Criterion) {
    let ip = [192u8, 0, 2, 1];
    c.bench_function("hash_key/ipv4", |b| {
        b.iter(|| balance::hash_key(black_box(&ip)))
    });
}

criterion_group!(benches, picks, maglev_build, hash_key);
criterion_main!(benches);
