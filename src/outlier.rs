//! Passive health (outlier detection, as Envoy's): requests that fail on a
//! backend in a row eject it for a while, before an active check (if any)
//! notices. Separate from the active health state: a backend can be up by
//! its check and ejected, or the other way round, and `/status` shows both.
//!
//! One [`Outlier`] per (pool, backend address), kept outside the snapshot
//! like health, so a reload that keeps a backend keeps its ejection and its
//! back-off. Readers (the balancer's `eligible`) load one atomic; only a
//! failure that reaches the threshold takes a lock.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::OutlierConfig;

/// What one request to a backend came to, as passive health counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500, or a TCP connect that worked.
    Success,
    /// A connect failure, a reset or close without an answer, no response
    /// head in time.
    Failure,
    /// A 5xx response.
    Status5xx,
}

/// Milliseconds since the first call, plus one: 0 stays free to mean
/// "not ejected".
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

#[derive(Default)]
pub struct Outlier {
    failures: AtomicU32,
    errors_5xx: AtomicU32,
    /// When the current ejection ends ([`now_ms`]); 0 when not ejected.
    until: AtomicU64,
    /// Ejections ever, for the counter.
    ejections: AtomicU64,
    streak: Mutex<Streak>,
}

/// How the back-off grows: ejections in a row, forgiven one per base
/// ejection time spent without one (Envoy decrements its multiplier so).
#[derive(Default)]
struct Streak {
    count: u32,
    last_end: u64,
}

impl Outlier {
    /// Ejected now. One atomic load while not ejected.
    #[inline]
    pub fn is_ejected(&self) -> bool {
        let until = self.until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if now_ms() < until {
            return true;
        }
        // Over: clear it so later reads need no clock.
        let _ = self
            .until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    /// Time left of the current ejection, if ejected.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.until.load(Ordering::Relaxed);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Counts `outcome`; returns the ejection's length when it ejected the
    /// backend. `may_eject` is asked only then (the pool's share cap).
    pub fn record(
        &self,
        outcome: Outcome,
        config: &OutlierConfig,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        let (counter, threshold) = match outcome {
            Outcome::Success => {
                reset(&self.failures);
                reset(&self.errors_5xx);
                return None;
            }
            Outcome::Failure => (&self.failures, config.consecutive_failures),
            Outcome::Status5xx => {
                reset(&self.failures);
                (&self.errors_5xx, config.consecutive_5xx)
            }
        };
        if threshold == 0 {
            return None;
        }
        let n = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n < threshold {
            return None;
        }
        self.eject(config, may_eject)
    }

    #[cold]
    fn eject(&self, config: &OutlierConfig, may_eject: impl FnOnce() -> bool) -> Option<Duration> {
        let mut streak = crate::locked(&self.streak);
        if self.is_ejected() || !may_eject() {
            // Counters keep counting: the next failure asks again.
            return None;
        }
        let now = now_ms();
        let base = config.ejection.as_millis().max(1) as u64;
        let forgiven = now.saturating_sub(streak.last_end) / base;
        streak.count = (streak
            .count
            .saturating_sub(forgiven.min(u32::MAX.into()) as u32))
            + 1;
        let length = config
            .ejection
            .saturating_mul(streak.count)
            .min(config.max_ejection);
        let until = now + length.as_millis() as u64;
        streak.last_end = until;
        self.until.store(until, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.errors_5xx.store(0, Ordering::Relaxed);
        Some(length)
    }
}

/// Zeroes `counter`, writing only when it is not zero already (the common
/// case on the success path: a load, no write to a shared line).
#[inline]
fn reset(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

/// How many of `count` backends may be ejected at once under `percent`.
pub fn ejectable(count: usize, percent: u8) -> usize {
    count * usize::from(percent) / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(failures: u32, five: u32, ejection_ms: u64) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: failures,
            consecutive_5xx: five,
            ejection: Duration::from_millis(ejection_ms),
            max_ejection: Duration::from_millis(ejection_ms * 3),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn failures_in_a_row_eject_and_a_success_forgives() {
        let o = Outlier::default();
        let c = config(3, 0, 60_000);
        assert_eq!(o.record(Outcome::Failure, &c, || true), None);
        assert_eq!(o.record(Outcome::Failure, &c, || true), None);
        assert_eq!(o.record(Outcome::Success, &c, || true), None);
        assert_eq!(o.record(Outcome::Failure, &c, || true), None);
        assert_eq!(o.record(Outcome::Failure, &c, || true), None);
        assert!(!o.is_ejected());
        let length = o.record(Outcome::Failure, &c, || true);
        assert_eq!(length, Some(Duration::from_secs(60)));
        assert!(o.is_ejected());
        assert_eq!(o.ejections(), 1);
        assert!(o.ejected_for().unwrap() > Duration::from_secs(59));
    }

    #[test]
    fn five_hundreds_count_only_when_configured() {
        let o = Outlier::default();
        let off = config(2, 0, 1000);
        for _ in 0..10 {
            assert_eq!(o.record(Outcome::Status5xx, &off, || true), None);
        }
        let on = config(2, 2, 1000);
        // A 5xx proves the backend reachable: connect failures start over.
        o.record(Outcome::Failure, &on, || true);
        o.record(Outcome::Status5xx, &on, || true);
        assert_eq!(o.record(Outcome::Failure, &on, || true), None);
        assert!(o.record(Outcome::Status5xx, &on, || true).is_some());
    }

    #[test]
    fn the_cap_refuses_and_the_next_failure_asks_again() {
        let o = Outlier::default();
        let c = config(1, 0, 60_000);
        assert_eq!(o.record(Outcome::Failure, &c, || false), None);
        assert!(!o.is_ejected());
        assert!(o.record(Outcome::Failure, &c, || true).is_some());
    }

    #[test]
    fn back_off_grows_with_repeats_up_to_the_cap() {
        let o = Outlier::default();
        let c = config(1, 0, 50);
        let mut lengths = Vec::new();
        for _ in 0..4 {
            lengths.push(o.record(Outcome::Failure, &c, || true).unwrap());
            while o.is_ejected() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let ms: Vec<u128> = lengths.iter().map(|d| d.as_millis()).collect();
        // 50, 100, 150, then the 150 ms cap (forgiveness may shave a step
        // when the machine is slow, never add one).
        assert_eq!(ms[0], 50);
        assert!(ms[1] >= 50 && ms[1] <= 100, "{ms:?}");
        assert!(ms.iter().all(|&m| m <= 150), "{ms:?}");
        assert!(ms[3] > ms[0] || ms[2] > ms[0], "{ms:?}");
    }

    #[test]
    fn the_share_rounds_down() {
        assert_eq!(ejectable(2, 50), 1);
        assert_eq!(ejectable(1, 50), 0);
        assert_eq!(ejectable(3, 50), 1);
        assert_eq!(ejectable(1, 100), 1);
        assert_eq!(ejectable(10, 0), 0);
    }
}
