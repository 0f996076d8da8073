//! The snapshot: a config compiled into what the data path reads, swapped
//! whole through one `ArcSwap`. A request loads it once and sees one
//! consistent generation from routing to backend choice.
//!
//! What must outlive a snapshot (health, active counts, idle backend
//! connections) is owned elsewhere and referenced by key, so a new
//! snapshot for a config that keeps a backend keeps its state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::admission::{Denied, PoolShared, RetryGuard};
use crate::balance::{self, Balancer, Candidates};
use crate::config::{
    BackendConfig, CompressConfig, Config, DatacenterConfig, HashKey, HeaderRuleSet, HeaderRules,
    ListenerConfig, PoolConfig, RouteConfig,
};
use crate::discovery::{Discovered, Registered, Sets};
use crate::health::{Health, HealthKey, HealthTable, State};
use crate::metrics::{BackendMetrics, RouteMetrics};
use crate::outlier::{self, Outcome, Outlier};
use crate::overrides::{Override, Overrides, Target};
use crate::quorum::{self, Quorum};
use crate::rules::{ErrorPages, Rules};
use crate::sticky::Sticky;
use crate::upstream::unread::UnreadNames;
use crate::upstream::{IdleConnections, Upstream};

pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

pub struct Snapshot {
    pub generation: u64,
    /// This snapshot's own number, never another's (a snapshot of the same
    /// generation, made for discovered backends, has its own): what a
    /// connection compares to reuse the listener it found in it.
    pub serial: u64,
    pub config: Arc<Config>,
    /// In config order.
    pub pools: Vec<Arc<Pool>>,
    /// By bind address: the identity of a listener across reloads. Looked
    /// up on every request: foldhash (keys come from the config, not from
    /// clients) costs a tenth of SipHash's 400 instructions.
    pub listeners: HashMap<ListenerId, Arc<Listener>, foldhash::fast::FixedState>,
    /// In config order (the DNS side indexes them so).
    pub datacenters: Arc<[Datacenter]>,
}

pub struct Datacenter {
    pub config: DatacenterConfig,
    /// Its local pools, read from the same health table the balancer uses.
    pub pools: Vec<Arc<Pool>>,
    pub remote_check: Option<Arc<Health>>,
    pub runtime_override: Arc<AtomicU8>,
    /// The state the cluster's quorum gave it (see [`crate::quorum`]).
    pub quorum: Arc<AtomicU8>,
}

impl Datacenter {
    /// Every local pool has `min_healthy` healthy backends and the remote
    /// check (if any) passes, and no `down` override says otherwise. Drain
    /// aside.
    pub fn healthy(&self) -> bool {
        self.override_state() != Override::Down
            && quorum::decided(&self.quorum).unwrap_or_else(|| self.locally_healthy())
    }

    /// What this node alone sees: every local pool has `min_healthy`
    /// healthy backends and the remote check (if any) passes. The view it
    /// publishes to the cluster's quorum.
    pub fn locally_healthy(&self) -> bool {
        self.pools
            .iter()
            .all(|p| p.healthy() >= p.config.min_healthy)
            && self.remote_check.as_ref().is_none_or(|h| h.is_up())
    }

    /// Why the data center is not up, in words for the log; None when up.
    pub fn why_not_up(&self) -> Option<String> {
        if self.override_state() == Override::Down {
            return Some("forced down by an override".to_owned());
        }
        match quorum::decided(&self.quorum) {
            Some(false) => {
                return Some("down by the cluster's quorum of published views".to_owned());
            }
            // Up by the quorum, whatever this node sees: only drain is left.
            Some(true) => return self.why_drained(),
            None => {}
        }
        if let Some(p) = self
            .pools
            .iter()
            .find(|p| p.healthy() < p.config.min_healthy)
        {
            return Some(format!(
                "pool {} has {} healthy backends, below min_healthy {}",
                p.name,
                p.healthy(),
                p.config.min_healthy
            ));
        }
        if let Some(check) = self.remote_check.as_ref().filter(|h| !h.is_up()) {
            let reason = check
                .checks()
                .and_then(|c| c.last())
                .map_or_else(|| "no answer yet".to_owned(), |r| r.reason);
            return Some(format!("remote check failing: {reason}"));
        }
        self.why_drained()
    }

    fn why_drained(&self) -> Option<String> {
        self.drained().then(|| {
            if self.config.drain {
                "drained by the config".to_owned()
            } else {
                "drained by an override".to_owned()
            }
        })
    }

    /// Healthy and not drained: what DNS answers with first.
    pub fn up(&self) -> bool {
        !self.drained() && self.healthy()
    }

    pub fn override_state(&self) -> Override {
        Override::load(&self.runtime_override)
    }

    /// Drained by config or by a runtime override.
    pub fn drained(&self) -> bool {
        self.config.drain || self.override_state() == Override::Drain
    }
}

impl Snapshot {
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.name == name)
    }

    /// Whether this config has what `target` overrides.
    pub fn has(&self, target: &Target) -> bool {
        let has_backend = |p: &Pool, addr| p.backends.iter().any(|b| b.addr == addr);
        match target {
            Target::Datacenter { name } => self.datacenters.iter().any(|d| d.config.name == *name),
            Target::Backend { addr, pool: None } => {
                self.pools.iter().any(|p| has_backend(p, *addr))
            }
            Target::Backend {
                addr,
                pool: Some(pool),
            } => self.pool(pool).is_some_and(|p| has_backend(p, *addr)),
        }
    }
}

/// A listener's identity across reloads: its bind address, plus its name
/// where the address is not unique on its own (port 0, as tests use).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerId {
    pub bind: SocketAddr,
    name: Option<Arc<str>>,
}

impl ListenerId {
    pub fn of(config: &ListenerConfig) -> Self {
        ListenerId {
            bind: config.bind,
            name: (config.bind.port() == 0).then(|| config.name.as_str().into()),
        }
    }
}

impl std::fmt::Display for ListenerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{} ({name})", self.bind),
            None => write!(f, "{}", self.bind),
        }
    }
}

pub struct Listener {
    pub config: ListenerConfig,
    pub default_route: Route,
    pub routes: Vec<(RouteConfig, Route)>,
    /// `error_pages`, read when the config was checked.
    pub error_pages: Arc<ErrorPages>,
    /// The client's fields geolb's HTTP/1 server may pass on unread: none
    /// that the config reads.
    pub unread: UnreadNames,
}

impl Listener {
    /// First matching route, else the listener's pool. `host` is lower-case
    /// without a port.
    pub fn route(&self, host: Option<&str>, path: &str) -> &Route {
        self.routes
            .iter()
            .find(|(rule, _)| {
                rule.host.as_deref().is_none_or(|h| Some(h) == host)
                    && rule
                        .path_prefix
                        .as_deref()
                        .is_none_or(|p| path.starts_with(p))
            })
            .map_or(&self.default_route, |(_, route)| route)
    }
}

/// A pool as seen from one listener: the pool and that pair's metrics.
pub struct Route {
    pub pool: Arc<Pool>,
    pub metrics: Arc<RouteMetrics>,
    /// None when neither the listener nor the route has header rules.
    pub headers: Option<Arc<RouteHeaders>>,
    /// The route's `compress`, else its listener's.
    pub compress: Option<Arc<CompressConfig>>,
    /// The listener's rules with the route's own; None: none at all.
    pub rules: Option<Box<Rules>>,
}

/// The header rules a request to one route meets: its listener's, then
/// the route's own (each of them remove, set, add in turn).
pub struct RouteHeaders {
    /// The listener's name, for `{listener}`.
    pub listener: Arc<str>,
    pub request: Vec<HeaderRules>,
    pub response: Vec<HeaderRules>,
}

impl RouteHeaders {
    fn of(listener: &ListenerConfig, route: Option<&HeaderRuleSet>) -> Option<Arc<RouteHeaders>> {
        let sets = || std::iter::once(&listener.headers.rules).chain(route);
        let stages = |side: fn(&HeaderRuleSet) -> &HeaderRules| -> Vec<HeaderRules> {
            sets()
                .map(side)
                .filter(|r| !r.is_empty())
                .cloned()
                .collect()
        };
        let request = stages(|s| &s.request);
        let response = stages(|s| &s.response);
        (!request.is_empty() || !response.is_empty()).then(|| {
            Arc::new(RouteHeaders {
                listener: listener.name.as_str().into(),
                request,
                response,
            })
        })
    }
}

/// The names of [`UnreadNames`] that `lc`'s requests may pass unread: all
/// but those its header rules or its pools' hashing keys name, and the
/// ones its access log logs.
fn unread_names(lc: &ListenerConfig, pools: &[PoolConfig]) -> UnreadNames {
    let rule_sets = std::iter::once(&lc.headers.rules).chain(lc.routes.iter().map(|r| &r.headers));
    let mut reads: Vec<&str> = Vec::new();
    for rules in rule_sets.map(|s| &s.request) {
        let named = rules.set.iter().chain(&rules.add).map(|(n, _)| n);
        reads.extend(
            rules
                .remove
                .iter()
                .chain(named)
                .map(http::HeaderName::as_str),
        );
    }
    let routed = std::iter::once(&lc.pool).chain(lc.routes.iter().map(|r| &r.pool));
    for name in routed {
        if let Some(HashKey::Header(key)) = pools.iter().find(|p| p.name == *name).map(|p| &p.hash)
        {
            reads.push(key);
        }
    }
    UnreadNames::of_listener(lc.access_log, reads)
}

pub struct Pool {
    pub name: Arc<str>,
    pub config: PoolConfig,
    pub backends: Vec<Backend>,
    /// How its backends are spoken to (HTTP/1.1 or HTTP/2, TLS or not).
    pub upstream: Upstream,
    balancer: Box<dyn Balancer>,
    /// Its queue and retry budget, kept across reloads.
    pub shared: Arc<PoolShared>,
    /// Taken to eject, so that two failing backends at once cannot both
    /// pass the `max_ejected_percent` cap.
    eject_lock: Mutex<()>,
    /// `sticky`: the cookie naming its backends.
    pub sticky: Option<Sticky>,
}

pub struct Backend {
    pub addr: SocketAddr,
    /// `addr` as text, for labels and logs.
    pub label: Arc<str>,
    pub weight: u32,
    pub drain: bool,
    pub health: Arc<Health>,
    /// Passive health in this pool, kept across reloads.
    pub outlier: Arc<Outlier>,
    pub shared: Arc<BackendShared>,
    /// This pool's traffic to it, for `/metrics`.
    pub metrics: Arc<BackendMetrics>,
    /// The override of this backend in every pool.
    pub all_pools_override: Arc<AtomicU8>,
    /// The override of this backend in this pool only; wins over the
    /// other when set.
    pub pool_override: Arc<AtomicU8>,
    /// Registered in etcd (the pool's `discovery`), not listed in the
    /// config: its registration.
    pub discovered: Option<Registered>,
}

/// Which override acts on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideScope {
    AllPools,
    Pool,
}

impl OverrideScope {
    pub fn as_str(self) -> &'static str {
        match self {
            OverrideScope::AllPools => "all_pools",
            OverrideScope::Pool => "pool",
        }
    }
}

impl Backend {
    /// Up and not drained (by config or at runtime): may take new work.
    pub fn is_available(&self) -> bool {
        !self.drain && self.health.is_up() && self.override_state() == Override::Auto
    }

    /// The health the balancer acts on: a `down` override reads as a
    /// failed check.
    pub fn state(&self) -> State {
        match self.override_state() {
            Override::Down => State::Down,
            _ => self.health.state(),
        }
    }

    pub fn override_state(&self) -> Override {
        self.override_in_force().0
    }

    /// The override acting on this backend and where it was set (None:
    /// none is set).
    pub fn override_in_force(&self) -> (Override, Option<OverrideScope>) {
        match Override::load(&self.pool_override) {
            Override::Auto => match Override::load(&self.all_pools_override) {
                Override::Auto => (Override::Auto, None),
                other => (other, Some(OverrideScope::AllPools)),
            },
            other => (other, Some(OverrideScope::Pool)),
        }
    }

    /// Drained by config or by a runtime override.
    pub fn drained(&self) -> bool {
        self.drain || self.override_state() == Override::Drain
    }
}

/// A backend's idle connections are shared by every pool that lists it:
/// the largest of their `max_idle` applies.
fn set_max_idle(pools: &[Arc<Pool>]) {
    let mut max: HashMap<SocketAddr, u32> = HashMap::new();
    for pool in pools {
        for b in &pool.backends {
            let m = max.entry(b.addr).or_default();
            *m = (*m).max(pool.config.limits.max_idle);
        }
    }
    for pool in pools {
        for b in &pool.backends {
            b.shared.idle.set_max_idle(max[&b.addr] as usize);
        }
    }
}

/// Per backend address, shared by every pool and generation naming it.
pub struct BackendShared {
    pub active: AtomicUsize,
    pub idle: IdleConnections,
}

impl BackendShared {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

impl Pool {
    /// Backends up and not drained.
    pub fn healthy(&self) -> usize {
        self.backends.iter().filter(|b| b.is_available()).count()
    }

    /// What the pool's algorithm hashes requests on; None when it does
    /// not hash, so callers need not compute a key.
    pub fn hash_on(&self) -> Option<&HashKey> {
        self.balancer.hashes().then_some(&self.config.hash)
    }

    /// Picks an available backend not in `tried` and not ejected.
    pub fn pick(&self, tried: &[usize], key: u64) -> Option<usize> {
        let view = PickView {
            pool: self,
            tried,
            limit: usize::MAX,
        };
        self.balancer.pick(&view, key)
    }

    /// Whether some backend not in `tried` could be picked, full or not.
    pub fn any_eligible(&self, tried: &[usize]) -> bool {
        let view = PickView {
            pool: self,
            tried,
            limit: usize::MAX,
        };
        (0..self.backends.len()).any(|i| view.eligible(i))
    }

    /// Whether [`Pool::acquire`] can wait (in the queue of a pool with
    /// `max_connections`); without one it answers at once.
    pub fn may_queue(&self) -> bool {
        self.config.limits.max_connections.is_some()
    }

    /// A backend for a request (or TCP connection) and its place in the
    /// backend's active count. Without `max_connections`, a pick and one
    /// atomic add; with it, a backend below its limit, else a wait of at
    /// most `wait` in the pool's queue.
    pub async fn acquire(&self, tried: &[usize], key: u64, wait: Duration) -> Acquired {
        let Some(limit) = self.config.limits.max_connections else {
            let index = self.pick(tried, key).ok_or(Denied::NoBackend)?;
            let guard = ActiveGuard::new(self.backends[index].shared.clone());
            return Ok((index, guard));
        };
        // Behind requests already waiting, so the queue stays in order.
        if self.shared.waiting() == 0
            && let Some(got) = self.try_limited(tried, key, limit as usize)
        {
            return Ok(got);
        }
        self.queue(tried, key, limit as usize, wait).await
    }

    /// As [`Pool::acquire`], but a request whose sticky cookie named
    /// backend `pinned` goes there while it may be picked (up, undrained,
    /// not ejected), waiting in the queue for it when it is full, as
    /// HAProxy queues for a persisted server. Else, and for retries, the
    /// balancer picks.
    pub async fn acquire_pinned(
        &self,
        pinned: Option<usize>,
        tried: &[usize],
        key: u64,
        wait: Duration,
    ) -> Acquired {
        if let Some(i) = pinned
            && tried.is_empty()
            && i < self.backends.len()
        {
            let view = PickView {
                pool: self,
                tried,
                limit: usize::MAX,
            };
            if view.eligible(i) {
                let shared = &self.backends[i].shared;
                let Some(limit) = self.config.limits.max_connections else {
                    return Ok((i, ActiveGuard::new(shared.clone())));
                };
                if self.shared.waiting() == 0
                    && let Some(guard) =
                        ActiveGuard::within(shared.clone(), limit as usize, self.shared.clone())
                {
                    return Ok((i, guard));
                }
                // Every other backend counts as tried: the queue waits for this one.
                let others: Vec<usize> = (0..self.backends.len()).filter(|&j| j != i).collect();
                match self.queue(&others, key, limit as usize, wait).await {
                    // It went down or was ejected while waiting.
                    Err(Denied::NoBackend) => {}
                    got => return got,
                }
            }
        }
        self.acquire(tried, key, wait).await
    }

    /// A backend below `limit`, its slot taken; None if none has room.
    fn try_limited(&self, tried: &[usize], key: u64, limit: usize) -> Option<(usize, ActiveGuard)> {
        let view = PickView {
            pool: self,
            tried,
            limit,
        };
        // A pick can lose the last slot to a request of another pool (or
        // thread) between the look and the take: pick again, briefly.
        for _ in 0..4 {
            let index = self.balancer.pick(&view, key)?;
            let backend = &self.backends[index];
            if let Some(guard) =
                ActiveGuard::within(backend.shared.clone(), limit, self.shared.clone())
            {
                return Some((index, guard));
            }
        }
        None
    }

    /// Waits in the queue for a backend with room. Boxed: the rare path,
    /// whose state would otherwise enlarge every request's future.
    fn queue<'a>(
        &'a self,
        tried: &'a [usize],
        key: u64,
        limit: usize,
        wait: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Acquired> + Send + 'a>> {
        Box::pin(async move {
            if !self.any_eligible(tried) {
                return Err(Denied::NoBackend);
            }
            let Some(_place) = self.shared.enqueue(self.config.limits.queue) else {
                return Err(Denied::QueueFull);
            };
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let freed = self.shared.freed();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if let Some(got) = self.try_limited(tried, key, limit) {
                    // Room for more than one (a raised limit, a backend back
                    // from ejection): pass the word on.
                    if self.shared.waiting() > 1 {
                        self.shared.wake_one();
                    }
                    return Ok(got);
                }
                if !self.any_eligible(tried) {
                    return Err(Denied::NoBackend);
                }
                if tokio::time::timeout_at(deadline, freed).await.is_err() {
                    self.shared.timed_out();
                    return Err(Denied::QueueTimeout);
                }
            }
        })
    }

    /// Counts what a request to backend `index` came to, for passive
    /// health; ejects it (logged) when that makes too many in a row.
    #[inline]
    pub fn outcome(&self, index: usize, outcome: Outcome) {
        let config = &self.config.outlier;
        if !config.enabled() {
            return;
        }
        let backend = &self.backends[index];
        let may_eject = || {
            let _one_at_a_time = crate::locked(&self.eject_lock);
            let ejected = self.ejected();
            ejected < outlier::ejectable(self.backends.len(), config.max_ejected_percent)
        };
        if let Some(length) = backend.outlier.record(outcome, config, may_eject) {
            tracing::warn!(
                pool = %self.name,
                backend = %backend.label,
                seconds = length.as_secs_f64(),
                "backend ejected after failing requests in a row"
            );
        }
    }

    /// Backends ejected now.
    pub fn ejected(&self) -> usize {
        self.backends
            .iter()
            .filter(|b| b.outlier.is_ejected())
            .count()
    }

    /// Leave to retry within the pool's retry budget, or None (counted).
    pub fn try_retry(&self) -> Option<RetryGuard> {
        let active = self.backends.iter().map(|b| b.shared.active()).sum();
        self.shared.try_retry(&self.config.retry_budget, active)
    }
}

/// A backend's index and its place in its active count, or why none.
pub type Acquired = Result<(usize, ActiveGuard), Denied>;

struct PickView<'a> {
    pool: &'a Pool,
    tried: &'a [usize],
    /// Backends with this many active are full (`usize::MAX`: no limit).
    limit: usize,
}

impl Candidates for PickView<'_> {
    fn count(&self) -> usize {
        self.pool.backends.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.pool.backends[i].weight
    }
    fn eligible(&self, i: usize) -> bool {
        let b = &self.pool.backends[i];
        b.is_available()
            && !self.tried.contains(&i)
            && !b.outlier.is_ejected()
            && (self.limit == usize::MAX || b.shared.active() < self.limit)
    }
    fn active(&self, i: usize) -> usize {
        self.pool.backends[i].shared.active()
    }
}

/// Holds one unit of a backend's active count until dropped.
pub struct ActiveGuard {
    shared: Arc<BackendShared>,
    /// The queue to wake when this unit frees room under a limit.
    wake: Option<Arc<PoolShared>>,
}

impl ActiveGuard {
    pub fn new(shared: Arc<BackendShared>) -> Self {
        shared.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { shared, wake: None }
    }

    /// A unit taken only while the count is below `limit`.
    fn within(shared: Arc<BackendShared>, limit: usize, wake: Arc<PoolShared>) -> Option<Self> {
        shared
            .active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(ActiveGuard {
            shared,
            wake: Some(wake),
        })
    }

    pub fn shared(&self) -> &Arc<BackendShared> {
        &self.shared
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(queue) = &self.wake {
            queue.wake_one();
        }
    }
}

/// Per-address state that must survive snapshots. Entries die with the
/// last snapshot that names them.
#[derive(Default)]
pub struct BackendRegistry {
    by_addr: Mutex<HashMap<SocketAddr, Weak<BackendShared>>>,
    /// Passive health by (pool, backend address).
    outliers: Mutex<HashMap<(String, SocketAddr), Weak<Outlier>>>,
    /// Queues and retry budgets by pool name.
    pools: Mutex<HashMap<String, Weak<PoolShared>>>,
    pub overrides: Arc<Overrides>,
    /// Data-center states decided over the cluster's published views.
    pub quorum: Arc<Quorum>,
    /// Backends registered in etcd, by discovery prefix.
    pub discovered: Arc<Discovered>,
}

impl BackendRegistry {
    /// Forgets addresses no snapshot names any more.
    fn prune(&self) {
        let mut map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, weak| weak.strong_count() > 0);
        crate::locked(&self.outliers).retain(|_, weak| weak.strong_count() > 0);
    }

    fn get(&self, addr: SocketAddr) -> Arc<BackendShared> {
        let mut map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = map.get(&addr).and_then(Weak::upgrade) {
            return shared;
        }
        let shared = Arc::new(BackendShared {
            active: AtomicUsize::new(0),
            idle: IdleConnections::default(),
        });
        map.insert(addr, Arc::downgrade(&shared));
        shared
    }

    fn outlier(&self, pool: &str, addr: SocketAddr) -> Arc<Outlier> {
        let mut map = crate::locked(&self.outliers);
        let key = (pool.to_owned(), addr);
        if let Some(o) = map.get(&key).and_then(Weak::upgrade) {
            return o;
        }
        let o = Arc::new(Outlier::default());
        map.insert(key, Arc::downgrade(&o));
        o
    }
}

/// The health keys a config needs, its pools' discovered backends
/// included: one per (backend address, pool check).
pub fn health_keys(config: &Config, discovered: &Sets) -> Vec<HealthKey> {
    let mut seen = std::collections::HashSet::new();
    config
        .pools
        .iter()
        .flat_map(|pool| {
            let found = registered(pool, discovered);
            pool.backends
                .iter()
                .map(|b| b.addr)
                .chain(found.into_iter().map(|r| r.address))
                .filter_map(move |addr| pool_check_key(pool, addr))
        })
        .chain(config.datacenters.iter().filter_map(remote_check_key))
        .filter(|key| seen.insert(key.clone()))
        .collect()
}

/// The backends registered for `pool` that its config does not list
/// (a static backend wins over a registration of its address).
fn registered<'a>(pool: &PoolConfig, discovered: &'a Sets) -> Vec<&'a Registered> {
    let Some(set) = pool
        .discovery
        .as_ref()
        .and_then(|d| discovered.get(&d.prefix))
    else {
        return Vec::new();
    };
    set.values()
        .filter(|r| !pool.backends.iter().any(|b| b.addr == r.address))
        .collect()
}

fn remote_check_key(dc: &DatacenterConfig) -> Option<HealthKey> {
    dc.check.as_ref().map(|remote| HealthKey {
        target: remote.target.clone(),
        check: remote.check.clone(),
        proxy_protocol: None,
    })
}

fn pool_check_key(pool: &PoolConfig, addr: SocketAddr) -> Option<HealthKey> {
    pool.check.as_ref().map(|check| HealthKey {
        target: addr.to_string(),
        check: check.clone(),
        proxy_protocol: pool.proxy_protocol,
    })
}

/// Compiles `config` into a snapshot, (re)starting health checkers so that
/// exactly the config's checks run. `upstreams`: one per pool, in order
/// (`reload::check` builds them); `pages`: each listener's `error_pages`,
/// in order (a listener past its end has none).
pub fn compile(
    config: Arc<Config>,
    upstreams: Vec<Upstream>,
    pages: Vec<Arc<ErrorPages>>,
    generation: u64,
    health: &Arc<HealthTable>,
    registry: &BackendRegistry,
) -> Snapshot {
    registry.prune();
    let discovered = registry.discovered.current();
    registry.discovered.want(
        config
            .pools
            .iter()
            .filter_map(|p| Some(p.discovery.as_ref()?.prefix.clone()))
            .collect(),
    );
    let healths = health.sync(&health_keys(&config, &discovered));
    let pools: Vec<Arc<Pool>> = config
        .pools
        .iter()
        .zip(upstreams)
        .map(|(pc, upstream)| {
            // Static backends first, in config order, then the registered
            // ones by address.
            let found = registered(pc, &discovered);
            let all: Vec<(BackendConfig, Option<&Registered>)> = pc
                .backends
                .iter()
                .map(|bc| (bc.clone(), None))
                .chain(found.into_iter().map(|r| {
                    let bc = BackendConfig {
                        addr: r.address,
                        weight: r.weight,
                        drain: false,
                    };
                    (bc, Some(r))
                }))
                .collect();
            let configs: Vec<BackendConfig> = all.iter().map(|(bc, _)| bc.clone()).collect();
            let backends = all
                .iter()
                .map(|(bc, registration)| Backend {
                    addr: bc.addr,
                    label: bc.addr.to_string().into(),
                    weight: bc.weight,
                    drain: bc.drain,
                    health: pool_check_key(pc, bc.addr)
                        .and_then(|k| healths.get(&k).cloned())
                        .unwrap_or_else(Health::always_up),
                    outlier: registry.outlier(&pc.name, bc.addr),
                    shared: registry.get(bc.addr),
                    metrics: BackendMetrics::get(&pc.name, &bc.addr.to_string()),
                    all_pools_override: registry.overrides.cell(&Target::Backend {
                        addr: bc.addr,
                        pool: None,
                    }),
                    pool_override: registry.overrides.cell(&Target::Backend {
                        addr: bc.addr,
                        pool: Some(pc.name.clone()),
                    }),
                    discovered: registration.cloned(),
                })
                .collect::<Vec<_>>();
            Arc::new(Pool {
                name: pc.name.as_str().into(),
                config: pc.clone(),
                balancer: balance::build(pc.balance, &configs),
                upstream,
                backends,
                shared: PoolShared::get(&registry.pools, &pc.name),
                eject_lock: Mutex::new(()),
                sticky: pc.sticky.as_ref().map(|s| {
                    let addrs: Vec<SocketAddr> = configs.iter().map(|b| b.addr).collect();
                    Sticky::new(&pc.name, s, &addrs)
                }),
            })
        })
        .collect();
    set_max_idle(&pools);
    let find = |name: &str| {
        pools
            .iter()
            .find(|p| &*p.name == name)
            .cloned()
            .expect("validated config: every referenced pool exists")
    };
    let listeners = config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, lc)| {
            let route = |pool: &str, rc: Option<&RouteConfig>| Route {
                pool: find(pool),
                metrics: RouteMetrics::get(&lc.name, pool),
                headers: RouteHeaders::of(lc, rc.map(|r| &r.headers)),
                compress: rc
                    .and_then(|r| r.compress.as_ref())
                    .unwrap_or(&lc.compress)
                    .clone(),
                rules: Rules::compile(&lc.rules, rc),
            };
            let listener = Listener {
                default_route: route(&lc.pool, None),
                routes: lc
                    .routes
                    .iter()
                    .map(|r| (r.clone(), route(&r.pool, Some(r))))
                    .collect(),
                config: lc.clone(),
                error_pages: pages.get(i).cloned().unwrap_or_default(),
                unread: unread_names(lc, &config.pools),
            };
            (ListenerId::of(lc), Arc::new(listener))
        })
        .collect();
    let datacenters = config
        .datacenters
        .iter()
        .map(|dc| Datacenter {
            config: dc.clone(),
            pools: dc.pools.iter().map(|name| find(name)).collect(),
            remote_check: remote_check_key(dc).and_then(|k| healths.get(&k).cloned()),
            runtime_override: registry.overrides.cell(&Target::Datacenter {
                name: dc.name.clone(),
            }),
            quorum: registry.quorum.cell(&dc.name),
        })
        .collect();
    static SERIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    Snapshot {
        generation,
        serial: SERIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        config,
        pools,
        listeners,
        datacenters,
    }
}

#[cfg(test)]
mod tests {
    use crate::upstream::unread::UnreadName;

    #[test]
    fn a_listener_passes_unread_no_field_its_config_reads() {
        let config = crate::config::parse_str(
            r#"
[[pool]]
name = "p"
backends = [{ addr = "127.0.0.1:1" }]
[[pool]]
name = "hashed"
balance = "maglev"
hash = "header:Sec-Fetch-Dest"
backends = [{ addr = "127.0.0.1:2" }]
[[listener]]
name = "plain"
bind = "127.0.0.1:0"
pool = "p"
[[listener]]
name = "ruled"
bind = "127.0.0.1:0"
pool = "p"
access_log = true
request_headers = { remove = ["Accept"], set = { "DNT" = "1" } }
response_headers = { remove = ["Pragma"] }
routes = [
  { path_prefix = "/a/", pool = "hashed", request_headers = { add = { "origin" = "x" } } },
]
"#,
            std::path::Path::new("test.toml"),
        )
        .unwrap();
        let names = |i: usize| super::unread_names(&config.listeners[i], &config.pools);
        assert_eq!(
            names(0),
            crate::upstream::unread::UnreadNames::of_listener(false, [])
        );
        let ruled = names(1);
        for read in [
            UnreadName::Accept,
            UnreadName::Dnt,
            UnreadName::Origin,
            UnreadName::SecFetchDest,
            UnreadName::UserAgent,
            UnreadName::Referer,
        ] {
            assert!(!ruled.contains(read), "{read:?}");
        }
        // A response rule reads no request field.
        assert!(ruled.contains(UnreadName::Pragma) && ruled.contains(UnreadName::SecFetchMode));
    }
}
