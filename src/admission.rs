//! What a pool lets through to its backends, beyond health: the queue of
//! requests waiting for a backend below its `max_connections` (HAProxy's
//! server `maxconn` with `maxqueue` and `timeout queue`), and the retry
//! budget (Envoy's `retry_budget`).
//!
//! One [`PoolShared`] per pool name, kept across reloads (like route
//! metrics), so its counters go on and requests waiting when a reload
//! lands are still woken by requests of the new generation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::config::RetryBudgetConfig;

#[derive(Default)]
pub struct PoolShared {
    /// Requests waiting now.
    waiting: AtomicUsize,
    /// Woken, one waiter at a time in arrival order, when a request with a
    /// limited backend ends.
    freed: Notify,
    /// Requests refused because the queue was full.
    refused_full: AtomicU64,
    /// Requests refused after waiting `queue_timeout`.
    refused_timeout: AtomicU64,
    retries_in_flight: AtomicUsize,
    budget_exhausted: AtomicU64,
}

/// Why a request got no backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No backend is up, undrained and not ejected (or all were tried).
    NoBackend,
    /// Every eligible backend is at `max_connections` and the queue is full.
    QueueFull,
    /// Waited `queue_timeout` in the queue.
    QueueTimeout,
}

impl PoolShared {
    /// The one of pool `name`, shared with every snapshot naming it.
    pub fn get(registry: &Mutex<HashMap<String, Weak<PoolShared>>>, name: &str) -> Arc<Self> {
        let mut map = crate::locked(registry);
        map.retain(|_, weak| weak.strong_count() > 0);
        if let Some(shared) = map.get(name).and_then(Weak::upgrade) {
            return shared;
        }
        let shared = Arc::new(PoolShared::default());
        map.insert(name.to_owned(), Arc::downgrade(&shared));
        shared
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn refused_full(&self) -> u64 {
        self.refused_full.load(Ordering::Relaxed)
    }

    pub fn refused_timeout(&self) -> u64 {
        self.refused_timeout.load(Ordering::Relaxed)
    }

    pub fn budget_exhausted(&self) -> u64 {
        self.budget_exhausted.load(Ordering::Relaxed)
    }

    pub fn retries_in_flight(&self) -> usize {
        self.retries_in_flight.load(Ordering::Relaxed)
    }

    /// A place in the queue of at most `capacity`, or None (counted).
    pub fn enqueue(self: &Arc<Self>, capacity: u32) -> Option<Waiting> {
        let joined = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < capacity as usize).then_some(n + 1)
            });
        if joined.is_err() {
            self.refused_full.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Waiting(self.clone()))
    }

    pub fn timed_out(&self) {
        self.refused_timeout.fetch_add(1, Ordering::Relaxed);
    }

    /// Called when a limited backend has room again: wakes the longest
    /// waiting request (or lets the next one that waits go on at once).
    pub fn wake_one(&self) {
        self.freed.notify_one();
    }

    /// The notification a waiter awaits; enable it before looking for a
    /// backend, so a slot freed in between is not missed.
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Leave to retry, or None when the budget is spent (counted):
    /// retries in flight stay under max(`min_concurrent`, `percent` of
    /// `active` requests).
    pub fn try_retry(
        self: &Arc<Self>,
        budget: &RetryBudgetConfig,
        active: usize,
    ) -> Option<RetryGuard> {
        let allowed =
            (active * usize::from(budget.percent) / 100).max(budget.min_concurrent as usize);
        let took = self
            .retries_in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < allowed).then_some(n + 1)
            });
        if took.is_err() {
            self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(RetryGuard(self.clone()))
    }
}

/// A place in a pool's queue, left when dropped.
pub struct Waiting(Arc<PoolShared>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One retry in flight, until the request it retried has ended.
pub struct RetryGuard(Arc<PoolShared>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.retries_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_holds_its_capacity() {
        let p = Arc::new(PoolShared::default());
        let a = p.enqueue(2).unwrap();
        let _b = p.enqueue(2).unwrap();
        assert!(p.enqueue(2).is_none());
        assert_eq!((p.waiting(), p.refused_full()), (2, 1));
        drop(a);
        assert!(p.enqueue(2).is_some());
        assert!(p.enqueue(0).is_none());
    }

    #[test]
    fn the_budget_is_a_share_of_active_with_a_floor() {
        let p = Arc::new(PoolShared::default());
        let budget = RetryBudgetConfig {
            percent: 20,
            min_concurrent: 3,
        };
        // 20 % of 10 is 2: the floor of 3 wins.
        let held: Vec<_> = (0..3).filter_map(|_| p.try_retry(&budget, 10)).collect();
        assert_eq!(held.len(), 3);
        assert!(p.try_retry(&budget, 10).is_none());
        // 20 % of 100 is 20.
        assert!(p.try_retry(&budget, 100).is_some());
        assert_eq!(p.budget_exhausted(), 1);
        drop(held);
        assert_eq!(p.retries_in_flight(), 0);
        let none = RetryBudgetConfig {
            percent: 0,
            min_concurrent: 0,
        };
        assert!(p.try_retry(&none, 1000).is_none());
    }
}
