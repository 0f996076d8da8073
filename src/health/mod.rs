//! Active health checks and the health table.
//!
//! Health lives outside the config snapshot, keyed by what is checked and
//! how ([`HealthKey`]): every pool that checks one address the same way
//! shares one checker task and one [`Health`], and a reload that keeps a
//! backend keeps its state. Readers (balancers, data centers, /status) only
//! load an atomic.

mod probe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{CheckConfig, ProxyProtocolVersion};
use crate::metrics::{HEALTH_CHECK_BUCKETS, Histogram};

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

/// The shared health of one checked target: its state is one atomic load
/// for the data path; the check statistics beside it are for /metrics and
/// /status.
pub struct Health {
    state: AtomicU8,
    /// None for a target without a check.
    checks: Option<CheckStats>,
}

/// What the checks of one target have seen, for /metrics and /status.
pub struct CheckStats {
    pub duration: Histogram,
    failures: AtomicU64,
    /// Unix time in milliseconds of the last state change (the entry's
    /// creation until the first result).
    last_change_ms: AtomicU64,
    /// Written once per probe, read by /status: never on a data path.
    last: Mutex<Option<CheckResult>>,
}

/// One probe's outcome, as /status and the status page show it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub ok: bool,
    /// Why it failed (connect refused, timeout, status 500, TLS error, ...);
    /// empty when it passed.
    pub reason: String,
    pub at: SystemTime,
    pub duration: Duration,
}

impl CheckStats {
    fn new() -> Self {
        CheckStats {
            duration: Histogram::new(HEALTH_CHECK_BUCKETS),
            failures: AtomicU64::new(0),
            last_change_ms: AtomicU64::new(unix_ms(SystemTime::now())),
            last: Mutex::new(None),
        }
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// When the state last changed, in Unix seconds.
    pub fn last_change(&self) -> f64 {
        self.last_change_ms.load(Ordering::Relaxed) as f64 / 1000.0
    }

    pub fn last(&self) -> Option<CheckResult> {
        crate::locked(&self.last).clone()
    }

    fn record(&self, result: CheckResult) {
        self.duration.observe(result.duration);
        if !result.ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        *crate::locked(&self.last) = Some(result);
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("state", &self.state())
            .field("checked", &self.checks.is_some())
            .finish()
    }
}

impl Health {
    fn checked() -> Self {
        Health {
            state: AtomicU8::new(State::Unknown as u8),
            checks: Some(CheckStats::new()),
        }
    }

    /// A target without a check counts as up.
    pub fn always_up() -> Arc<Self> {
        Arc::new(Health {
            state: AtomicU8::new(State::Up as u8),
            checks: None,
        })
    }

    /// What the checks have seen; None for a target without a check.
    pub fn checks(&self) -> Option<&CheckStats> {
        self.checks.as_ref()
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
        if let Some(checks) = &self.checks {
            let now = unix_ms(SystemTime::now());
            checks.last_change_ms.store(now, Ordering::Relaxed);
        }
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
                let health = Arc::new(Health::checked());
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
        let (at, started) = (SystemTime::now(), Instant::now());
        let result = match &prober {
            Ok(prober) => tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(key.check.timeout, prober.probe(&key)) => r,
            },
            // An unusable check setup (a CA file gone since start-up)
            // fails every probe, saying why.
            Err(e) => Ok(Err(std::io::Error::new(e.kind(), e.to_string()))),
        };
        let duration = started.elapsed();
        let (ok, why) = match result {
            Ok(Ok(())) => (true, String::new()),
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (
                false,
                format!("timeout: no answer within {:?}", key.check.timeout),
            ),
        };
        if let Some(checks) = health.checks() {
            checks.record(CheckResult {
                ok,
                reason: why.clone(),
                at,
                duration,
            });
        }
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
