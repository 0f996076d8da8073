//! Per-client limits of a listener (`[[listener]] client_limits`): open
//! connections and a request rate (token bucket) per client address
//! prefix, so that many addresses of one network count as one client.
//!
//! With no limit configured, admitting a connection or a request is one
//! relaxed atomic load: no lock, no hashing, no clock. With limits, it is
//! a hash, one uncontended lock of one of [`SHARDS`] tables, and (for
//! requests) a clock read.
//!
//! The table is bounded against a client with many addresses: at most
//! [`SHARDS`] × [`SHARD_CAP`] prefixes. A shard that is full first forgets
//! the prefixes at rest (no connection open and a full bucket: forgetting
//! them loses nothing), at most once a second; failing that, any prefix
//! without an open connection (its bucket is refilled: it may send a burst
//! again); failing that, a new prefix is let through untracked, rather than
//! refusing clients that have done nothing.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config;
use crate::metrics::CLIENT_LIMITED;

/// Tables per listener: requests of different clients seldom wait on the
/// same lock.
pub const SHARDS: usize = 64;
/// Prefixes per table: 7/8 of 1024, the most a hash table of 1024 buckets
/// holds before it doubles. With [`SHARDS`]: 57,344 prefixes, about 48
/// bytes each plus the table's, ~3 MiB at most per listener.
pub const SHARD_CAP: usize = 896;

/// A client prefix: the address masked to its prefix, and the family and
/// prefix length (so that a reload changing the length starts afresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    bits: u128,
    /// Prefix length, plus 256 for IPv4.
    kind: u16,
}

struct Entry {
    conns: u32,
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Entry>,
    last_sweep: Option<Instant>,
}

/// One listener's per-client limits and the state they keep.
pub struct ClientLimits {
    /// 0: no limit.
    max_conns: AtomicU32,
    /// 0: no limit.
    rate: AtomicU32,
    burst: AtomicU32,
    ipv4_prefix: AtomicU8,
    ipv6_prefix: AtomicU8,
    /// The listener's name, for the refusal counters (read only then).
    name: Mutex<Arc<str>>,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

/// Why a request is refused: how long until the client's bucket has a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for `Retry-After`, rounded up, at least 1.
    pub fn seconds(self) -> u64 {
        self.0.as_nanos().div_ceil(1_000_000_000).max(1) as u64
    }
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_conns: AtomicU32::new(0),
            rate: AtomicU32::new(0),
            burst: AtomicU32::new(0),
            ipv4_prefix: AtomicU8::new(24),
            ipv6_prefix: AtomicU8::new(56),
            name: Mutex::new(Arc::from("")),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl ClientLimits {
    /// New limits (start-up or a reload), for connections and requests
    /// from now on; what prefixes have used so far is kept.
    pub fn configure(&self, listener: &str, limits: Option<&config::ClientLimits>) {
        let l = limits.copied();
        *crate::locked(&self.name) = Arc::from(listener);
        self.ipv4_prefix
            .store(l.map_or(24, |l| l.ipv4_prefix), Ordering::Relaxed);
        self.ipv6_prefix
            .store(l.map_or(56, |l| l.ipv6_prefix), Ordering::Relaxed);
        self.burst
            .store(l.map_or(0, |l| l.burst), Ordering::Relaxed);
        self.rate.store(
            l.and_then(|l| l.requests_per_second).unwrap_or(0),
            Ordering::Relaxed,
        );
        self.max_conns.store(
            l.and_then(|l| l.max_connections).unwrap_or(0),
            Ordering::Relaxed,
        );
    }

    fn key(&self, ip: IpAddr) -> Key {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let len = self.ipv4_prefix.load(Ordering::Relaxed).min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                Key {
                    bits: u128::from(u32::from(a) & mask),
                    kind: 256 + u16::from(len),
                }
            }
            IpAddr::V6(a) => {
                let len = self.ipv6_prefix.load(Ordering::Relaxed).min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                Key {
                    bits: u128::from(a) & mask,
                    kind: u16::from(len),
                }
            }
        }
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        crate::locked(&self.shards[i])
    }

    /// Admits a connection from `ip`, or refuses it (`None`, counted) when
    /// its prefix has `max_connections` open. The guard counts it open
    /// until dropped.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<ClientConn> {
        let max = self.max_conns.load(Ordering::Relaxed);
        if max == 0 {
            return Some(ClientConn(None));
        }
        let key = self.key(ip);
        let rate = self.rate.load(Ordering::Relaxed);
        let burst = self.burst.load(Ordering::Relaxed);
        let mut shard = self.shard(&key);
        let Some(entry) = shard.entry(key, Instant::now(), rate, burst) else {
            return Some(ClientConn(None));
        };
        if entry.conns >= max {
            drop(shard);
            self.refused("connections");
            return None;
        }
        entry.conns += 1;
        Some(ClientConn(Some((self.clone(), key))))
    }

    /// Takes a token of `ip`'s bucket, or says how long until there is one
    /// (counted).
    pub fn request(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return Ok(());
        }
        let burst = self.burst.load(Ordering::Relaxed).max(1);
        let key = self.key(ip);
        let now = Instant::now();
        let mut shard = self.shard(&key);
        let Some(entry) = shard.entry(key, now, rate, burst) else {
            return Ok(());
        };
        entry.refill(now, rate, burst);
        if entry.tokens >= 1.0 {
            entry.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - entry.tokens) / f64::from(rate));
        drop(shard);
        self.refused("requests");
        Err(RetryAfter(wait))
    }

    #[cold]
    fn refused(&self, limit: &'static str) {
        let name = crate::locked(&self.name).clone();
        ::metrics::counter!(CLIENT_LIMITED, "listener" => name.to_string(), "limit" => limit)
            .increment(1);
    }

    /// The series of this listener at 0, so that the first refusal is a
    /// rate change and not a series appearing.
    pub fn register_series(&self) {
        let name = crate::locked(&self.name).to_string();
        for limit in ["connections", "requests"] {
            ::metrics::counter!(CLIENT_LIMITED, "listener" => name.clone(), "limit" => limit)
                .increment(0);
        }
    }

    /// Prefixes tracked now (for tests).
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| crate::locked(s).map.len()).sum()
    }
}

impl Entry {
    fn refill(&mut self, now: Instant, rate: u32, burst: u32) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.refilled = now;
    }

    /// Nothing lost by forgetting it: a new entry would be the same.
    fn at_rest(&self, now: Instant, rate: u32, burst: u32) -> bool {
        self.conns == 0
            && (rate == 0
                || self.tokens
                    + now.saturating_duration_since(self.refilled).as_secs_f64() * f64::from(rate)
                    >= f64::from(burst))
    }
}

impl Shard {
    /// `key`'s entry, made if need be; `None` when the shard is full of
    /// prefixes with open connections.
    fn entry(&mut self, key: Key, now: Instant, rate: u32, burst: u32) -> Option<&mut Entry> {
        if !self.map.contains_key(&key)
            && self.map.len() >= SHARD_CAP
            && !self.evict(now, rate, burst)
        {
            return None;
        }
        Some(self.map.entry(key).or_insert(Entry {
            conns: 0,
            tokens: f64::from(burst),
            refilled: now,
        }))
    }

    /// Makes room for one entry; false if none could go.
    #[cold]
    fn evict(&mut self, now: Instant, rate: u32, burst: u32) -> bool {
        // A sweep costs the whole shard: at most one a second, so a flood
        // of new prefixes cannot make every admission pay it.
        if self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.last_sweep = Some(now);
            self.map.retain(|_, e| !e.at_rest(now, rate, burst));
            if self.map.len() < SHARD_CAP {
                return true;
            }
        }
        let victim = self.map.iter().find(|(_, e)| e.conns == 0).map(|(k, _)| *k);
        victim.is_some_and(|k| self.map.remove(&k).is_some())
    }
}

/// A connection counted against its prefix's `max_connections`, until
/// dropped. `None`: not counted (no limit, or the table was full).
pub struct ClientConn(Option<(Arc<ClientLimits>, Key)>);

impl ClientConn {
    pub fn none() -> ClientConn {
        ClientConn(None)
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        let Some((limits, key)) = self.0.take() else {
            return;
        };
        let rate = limits.rate.load(Ordering::Relaxed);
        let burst = limits.burst.load(Ordering::Relaxed);
        let mut shard = limits.shard(&key);
        if let Some(e) = shard.map.get_mut(&key) {
            e.conns = e.conns.saturating_sub(1);
            if e.at_rest(Instant::now(), rate, burst) {
                shard.map.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: Option<u32>, rate: Option<u32>, burst: u32) -> Arc<ClientLimits> {
        let l = Arc::new(ClientLimits::default());
        l.configure(
            "t",
            Some(&config::ClientLimits {
                max_connections: max,
                requests_per_second: rate,
                burst,
                ipv4_prefix: 24,
                ipv6_prefix: 56,
            }),
        );
        l
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_count_per_prefix_and_free_on_drop() {
        let l = limits(Some(2), None, 0);
        let a = l.connect(ip("10.0.0.1")).unwrap();
        let _b = l.connect(ip("10.0.0.200")).unwrap();
        assert!(l.connect(ip("10.0.0.3")).is_none(), "same /24");
        let _c = l.connect(ip("10.0.1.1")).unwrap();
        // IPv4-mapped IPv6 is the same client as IPv4.
        assert!(l.connect(ip("::ffff:10.0.0.9")).is_none());
        drop(a);
        let _d = l.connect(ip("10.0.0.4")).unwrap();
        // IPv6 by /56.
        let _e = l.connect(ip("2001:db8:0:ff::1")).unwrap();
        let _f = l.connect(ip("2001:db8:0:1::2")).unwrap();
        assert!(l.connect(ip("2001:db8:0:80::3")).is_none());
        let _g = l.connect(ip("2001:db8:0:100::1")).unwrap();
    }

    #[test]
    fn no_limit_tracks_nothing() {
        let l = Arc::new(ClientLimits::default());
        let conns: Vec<_> = (0..1000)
            .map(|i| {
                l.connect(ip(&format!("10.0.{}.{}", i / 250, i % 250)))
                    .unwrap()
            })
            .collect();
        for _ in 0..1000 {
            l.request(ip("10.0.0.1")).unwrap();
        }
        assert_eq!(l.tracked(), 0);
        drop(conns);
    }

    #[test]
    fn a_bucket_allows_its_burst_then_says_when() {
        let l = limits(None, Some(2), 3);
        for _ in 0..3 {
            l.request(ip("192.0.2.1")).unwrap();
        }
        let wait = l.request(ip("192.0.2.7")).unwrap_err();
        assert!(wait.0 <= Duration::from_millis(500), "{wait:?}");
        assert_eq!(wait.seconds(), 1);
        l.request(ip("192.0.3.1")).unwrap();
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).seconds(), 1);
        assert_eq!(RetryAfter(Duration::ZERO).seconds(), 1);
        assert_eq!(RetryAfter(Duration::from_secs(2)).seconds(), 2);
        assert_eq!(RetryAfter(Duration::from_millis(2001)).seconds(), 3);
    }

    #[test]
    fn buckets_refill_at_the_rate() {
        let mut e = Entry {
            conns: 0,
            tokens: 0.0,
            refilled: Instant::now(),
        };
        let later = e.refilled + Duration::from_millis(250);
        e.refill(later, 10, 5);
        assert!((e.tokens - 2.5).abs() < 1e-9);
        e.refill(later + Duration::from_secs(10), 10, 5);
        assert_eq!(e.tokens, 5.0);
        assert!(e.at_rest(later, 10, 5));
    }

    #[test]
    fn the_table_stays_bounded_by_many_addresses() {
        let l = limits(Some(1), Some(1), 1);
        // Every prefix keeps a connection open: the table fills, then new
        // prefixes pass untracked.
        let held: Vec<_> = (0..(SHARDS * SHARD_CAP * 2) as u32)
            .map(|i| l.connect(IpAddr::from((i << 8).to_be_bytes())).unwrap())
            .collect();
        assert!(l.tracked() <= SHARDS * SHARD_CAP);
        drop(held);
        assert_eq!(l.tracked(), 0, "closed and at rest: forgotten");
        // Prefixes with empty buckets and no connection make room.
        for i in 0..(SHARDS * SHARD_CAP * 2) as u32 {
            l.request(IpAddr::from((i << 8).to_be_bytes())).unwrap();
        }
        assert!(l.tracked() <= SHARDS * SHARD_CAP);
    }

    #[test]
    fn a_reload_changes_limits_for_new_connections() {
        let l = limits(Some(1), None, 0);
        let a = l.connect(ip("10.0.0.1")).unwrap();
        assert!(l.connect(ip("10.0.0.2")).is_none());
        l.configure("t", None);
        let _b = l.connect(ip("10.0.0.2")).unwrap();
        drop(a);
        assert_eq!(l.tracked(), 0);
    }
}
