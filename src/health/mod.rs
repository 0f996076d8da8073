//! Active health checks and the health table.
//!
//! Health lives outside the config snapshot, keyed by what is checked and
//! how ([`HealthKey`]): every pool that checks one address the same way
//! shares one checker task and one [`Health`], and a reload that keeps a
//! backend keeps its state. Readers (balancers, data centers, /status) only
//! load an atomic.

mod probe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{CheckConfig, ProxyProtocolVersion};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Unknown,
    Up,
    Down,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
        }
    }
}

/// The shared, lock-free health of one checked target.
#[derive(Debug)]
pub struct Health {
    state: AtomicU8,
}

impl Health {
    fn new(state: State) -> Self {
        Health {
            state: AtomicU8::new(state as u8),
        }
    }

    /// A target without a check counts as up.
    pub fn always_up() -> Arc<Self> {
        Arc::new(Self::new(State::Up))
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            1 => State::Up,
            2 => State::Down,
            _ => State::Unknown,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state() == State::Up
    }

    fn set(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

/// What is checked and how: the identity of a health entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthKey {
    /// `host:port` or `ip:port`.
    pub target: String,
    pub check: CheckConfig,
    /// Backends that demand a PROXY header get a LOCAL one on tcp checks.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
}

struct Entry {
    health: Arc<Health>,
    stop: CancellationToken,
}

/// All running checkers. `sync` is the only way entries come and go, so a
/// reload is a single call with the new set of keys.
pub struct HealthTable {
    entries: Mutex<HashMap<HealthKey, Entry>>,
    shutdown: CancellationToken,
    /// Bumped on every state change, so waiters need not poll.
    changed: watch::Sender<u64>,
}

impl HealthTable {
    pub fn new(shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(HealthTable {
            entries: Mutex::new(HashMap::new()),
            shutdown,
            changed: watch::channel(0).0,
        })
    }

    /// Makes the running checkers exactly `keys`: starts the missing ones
    /// (their first probe runs at once), stops the ones no longer named,
    /// and returns the health of each key.
    pub fn sync(self: &Arc<Self>, keys: &[HealthKey]) -> HashMap<HealthKey, Arc<Health>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: std::collections::HashSet<&HealthKey> = keys.iter().collect();
        entries.retain(|key, entry| {
            let keep = wanted.contains(key);
            if !keep {
                entry.stop.cancel();
            }
            keep
        });
        let mut out = HashMap::with_capacity(keys.len());
        for key in keys {
            let entry = entries.entry(key.clone()).or_insert_with(|| {
                let health = Arc::new(Health::new(State::Unknown));
                let stop = self.shutdown.child_token();
                tokio::spawn(run_checker(
                    key.clone(),
                    health.clone(),
                    stop.clone(),
                    self.changed.clone(),
                ));
                Entry { health, stop }
            });
            out.insert(key.clone(), entry.health.clone());
        }
        out
    }

    /// Waits until every checker has a first result, or `limit` passes.
    pub async fn wait_first_round(&self, limit: Duration) {
        let mut changes = self.changed.subscribe();
        let all_known = || {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.values().all(|e| e.health.state() != State::Unknown)
        };
        let _ = tokio::time::timeout(limit, async {
            while !all_known() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// The longest check timeout among running checkers: how long a first
    /// round can take.
    pub fn longest_timeout(&self) -> Duration {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .keys()
            .map(|k| k.check.timeout)
            .max()
            .unwrap_or_default()
    }
}

/// Counts consecutive results against rise/fall. The first result decides
/// at once; after that a flip needs `rise` or `fall` results in a row.
struct Hysteresis {
    streak: u32,
}

impl Hysteresis {
    fn next(&mut self, current: State, ok: bool, rise: u32, fall: u32) -> State {
        let observed = if ok { State::Up } else { State::Down };
        if current == State::Unknown {
            self.streak = 0;
            return observed;
        }
        if observed == current {
            self.streak = 0;
            return current;
        }
        self.streak += 1;
        let needed = if ok { rise } else { fall };
        if self.streak >= needed {
            self.streak = 0;
            observed
        } else {
            current
        }
    }
}

async fn run_checker(
    key: HealthKey,
    health: Arc<Health>,
    stop: CancellationToken,
    changed: watch::Sender<u64>,
) {
    let mut hysteresis = Hysteresis { streak: 0 };
    let prober = probe::Prober::new(&key);
    loop {
        let result = match &prober {
            Ok(prober) => tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(key.check.timeout, prober.probe(&key)) => r,
            },
            // An unusable check setup (a CA file gone since start-up)
            // fails every probe, saying why.
            Err(e) => Ok(Err(std::io::Error::new(e.kind(), e.to_string()))),
        };
        let (ok, why) = match result {
            Ok(Ok(())) => (true, String::new()),
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (false, format!("no answer within {:?}", key.check.timeout)),
        };
        let before = health.state();
        let after = hysteresis.next(before, ok, key.check.rise, key.check.fall);
        if after != before {
            health.set(after);
            if ok {
                tracing::info!(target = %key.target, from = before.as_str(), "health check: now up");
            } else {
                tracing::warn!(target = %key.target, from = before.as_str(), reason = %why, "health check: now down");
            }
            changed.send_modify(|n| *n += 1);
        }
        // Jitter spreads checkers that started together (e.g. at boot)
        // so they do not probe in lockstep.
        let jitter = key.check.interval.mul_f64(fastrand::f64() * 0.2);
        let wait = key.check.interval.mul_f64(0.9) + jitter;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_then_needs_a_streak() {
        let mut h = Hysteresis { streak: 0 };
        assert_eq!(h.next(State::Unknown, false, 2, 3), State::Down);
        assert_eq!(h.next(State::Down, true, 2, 3), State::Down);
        assert_eq!(h.next(State::Down, true, 2, 3), State::Up);
        assert_eq!(h.next(State::Up, false, 2, 3), State::Up);
        assert_eq!(h.next(State::Up, false, 2, 3), State::Up);
        assert_eq!(h.next(State::Up, true, 2, 3), State::Up);
        // the good result broke the streak: three more failures are needed
        assert_eq!(h.next(State::Up, false, 2, 3), State::Up);
        assert_eq!(h.next(State::Up, false, 2, 3), State::Up);
        assert_eq!(h.next(State::Up, false, 2, 3), State::Down);
    }
}
