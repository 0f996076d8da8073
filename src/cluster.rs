//! `[cluster]`: runtime overrides shared by every node through etcd.
//!
//! [`Cluster`] is the [`OverrideStore`] of a node with `[cluster]`: a
//! change made through the admin API is written to etcd first and acts
//! here once etcd took it; every node watches the prefix and applies what
//! any node wrote, as the admin API would. The state last seen, with its
//! revision, is kept in `state_dir/cluster.json`, so a node that cannot
//! reach etcd serves with it, also after a restart: the cluster never
//! fails closed. On reconnecting, the watch resumes after the last
//! revision seen (or, when etcd compacted past it, everything is read
//! again and diffed), so no change is missed or applied twice.
//!
//! Keys, under `prefix` (default `/geolb/`), each holding
//! `{"state": "drain"|"down", "by": NODE, "at": RFC3339}` (`auto` deletes
//! the key):
//!
//! - `overrides/datacenter/NAME`
//! - `overrides/backend/ADDR` (every pool with that backend)
//! - `overrides/pool/POOL/ADDR` (that pool only)
//!
//! and `health/NODE`: each node's data-center views for the quorum
//! ([`crate::quorum`]), under a lease of its own ([`Cluster::run_quorum`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, TlsOptions, WatchOptions, WatchResponse, WatchStream,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::locked;
use crate::metrics::{
    CLUSTER_CONNECTED, CLUSTER_LAST_SYNC, CLUSTER_REVISION, CLUSTER_WATCH_EVENTS,
};
use crate::overrides::{
    Entry, Override, OverrideStore, Overrides, Saved, Stamp, StoreError, Target, replace_file,
};
use crate::quorum::{Published, Quorum};

/// The first wait before reconnecting; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a clean stop waits for etcd to revoke this node's lease.
const LEAVE_WITHIN: Duration = Duration::from_secs(1);

/// A node in the cluster: the store its overrides are written to, and
/// the state of its watch (for `/status` and `/metrics`).
pub struct Cluster {
    config: ClusterConfig,
    /// `state_dir/cluster.json`.
    file: PathBuf,
    overrides: Arc<Overrides>,
    /// Writes from the admin API's blocking threads run on it.
    runtime: tokio::runtime::Handle,
    /// A client per endpoint, made when first used. One endpoint at a
    /// time: tonic's balanced channel keeps sending requests to a member
    /// that is down, so failing over is done here.
    clients: tokio::sync::Mutex<Vec<Option<Client>>>,
    /// The endpoint the watch uses, moved on when it fails.
    current: AtomicUsize,
    connected: AtomicBool,
    /// The etcd revision the overrides reflect (0: none read yet).
    revision: AtomicI64,
    last_sync: Mutex<Option<SystemTime>>,
    /// Held while changes are applied and `revision` moves with them, so
    /// that a write of this node's own, acting here once etcd took it, is
    /// not applied over a later change the watch brought in meanwhile.
    applying: Mutex<()>,
    /// The lease this node's published views live under (0: none yet).
    lease: AtomicI64,
}

/// What `cluster.json` holds.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    revision: i64,
    /// Unix seconds of the last sync with etcd.
    synced_at: f64,
    overrides: Vec<Saved>,
}

/// The watch's state, as `/status` shows it.
#[derive(Serialize)]
pub struct ClusterStatus {
    pub node: String,
    pub datacenter: Option<String>,
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub connected: bool,
    pub revision: i64,
    /// Unix seconds; absent before the first sync.
    pub last_sync: Option<f64>,
    pub last_sync_age_seconds: Option<f64>,
    pub state_file: String,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Cluster {
    /// A cluster store for `config`, keeping its last state in
    /// `state_dir`. Connects only when first used.
    pub fn new(
        config: ClusterConfig,
        state_dir: &Path,
        overrides: Arc<Overrides>,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Cluster> {
        ::metrics::gauge!(CLUSTER_CONNECTED).set(0.0);
        ::metrics::gauge!(CLUSTER_LAST_SYNC).set(0.0);
        ::metrics::gauge!(CLUSTER_REVISION).set(0.0);
        ::metrics::counter!(CLUSTER_WATCH_EVENTS).absolute(0);
        let endpoints = config.etcd.len();
        Arc::new(Cluster {
            clients: tokio::sync::Mutex::new(vec![None; endpoints]),
            current: AtomicUsize::new(0),
            config,
            file: state_dir.join("cluster.json"),
            overrides,
            runtime,
            connected: AtomicBool::new(false),
            revision: AtomicI64::new(0),
            last_sync: Mutex::new(None),
            applying: Mutex::new(()),
            lease: AtomicI64::new(0),
        })
    }

    pub fn status(&self) -> ClusterStatus {
        let last = *locked(&self.last_sync);
        ClusterStatus {
            node: self.config.node.clone(),
            datacenter: self.config.datacenter.clone(),
            endpoints: self.config.etcd.clone(),
            prefix: self.config.prefix.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            revision: self.revision.load(Ordering::Relaxed),
            last_sync: last.map(unix_seconds),
            last_sync_age_seconds: last.map(|t| t.elapsed().map_or(0.0, |d| d.as_secs_f64())),
            state_file: self.file.display().to_string(),
        }
    }

    /// Watches the prefix until shutdown, reconnecting with backoff; each
    /// change read is applied to the overrides and kept in `cluster.json`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        // A revision from an earlier process may be of another cluster (or
        // of one restored from backup): the first session reads everything.
        let mut fresh = true;
        loop {
            let began = Instant::now();
            let ended = tokio::select! {
                ended = self.session(&mut fresh) => ended,
                _ = shutdown.cancelled() => return,
            };
            let was_connected = self.connected.swap(false, Ordering::Relaxed);
            ::metrics::gauge!(CLUSTER_CONNECTED).set(0.0);
            // The next endpoint next; the failed one's client is made
            // afresh (and logs in again) when its turn comes back.
            let failed = self.current.load(Ordering::Relaxed);
            self.clients.lock().await[failed] = None;
            self.current
                .store((failed + 1) % self.config.etcd.len(), Ordering::Relaxed);
            if was_connected || began.elapsed() > MAX_BACKOFF {
                backoff = MIN_BACKOFF;
            }
            let age = self.status().last_sync_age_seconds;
            if was_connected {
                tracing::error!(
                    error = %ended,
                    revision = self.revision.load(Ordering::Relaxed),
                    "lost etcd: serving with the last overrides seen until it is back"
                );
            } else {
                tracing::warn!(
                    error = %ended,
                    last_sync_age_seconds = age,
                    retry_in = ?backoff,
                    "cannot reach etcd: serving with the last overrides seen"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: read everything if needed, then watch from
    /// the revision after the last one seen. Returns why it ended.
    async fn session(&self, fresh: &mut bool) -> String {
        let dial = self.config.dial_timeout;
        let at = self.current.load(Ordering::Relaxed);
        let mut client = match self.client(at).await {
            Ok(client) => client,
            Err(e) => return e,
        };
        loop {
            if *fresh || self.revision.load(Ordering::Relaxed) == 0 {
                if let Err(e) = self.resync(&mut client).await {
                    return e;
                }
                *fresh = false;
            }
            let from = self.revision.load(Ordering::Relaxed) + 1;
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(from)
                .with_progress_notify();
            let watch = client.watch(self.overrides_prefix(), Some(options));
            let stream = match tokio::time::timeout(dial, watch).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return format!("watch: {e}"),
                Err(_) => return format!("watch: no answer within {dial:?}"),
            };
            let mut watch = LiveWatch::new(stream, dial);
            loop {
                let response = match watch.next().await {
                    Ok(response) => response,
                    Err(e) => return e,
                };
                if response.canceled() {
                    if response.compact_revision() > 0 {
                        tracing::warn!(
                            from,
                            compacted_to = response.compact_revision(),
                            "etcd compacted past the last revision seen: reading every override again"
                        );
                        *fresh = true;
                        break;
                    }
                    return format!("etcd cancelled the watch: {}", response.cancel_reason());
                }
                if response.created() {
                    self.connected.store(true, Ordering::Relaxed);
                    ::metrics::gauge!(CLUSTER_CONNECTED).set(1.0);
                    tracing::info!(from, endpoints = ?self.config.etcd, "watching etcd");
                }
                self.take(response);
            }
        }
    }

    /// Applies a watch response's events and moves the revision to it.
    fn take(&self, response: WatchResponse) {
        let _applying = locked(&self.applying);
        let mut revision = self.revision.load(Ordering::Relaxed);
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            ::metrics::counter!(CLUSTER_WATCH_EVENTS).increment(1);
            revision = revision.max(kv.mod_revision());
            let Some(target) = self.target_of(kv.key()) else {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "etcd: a key under the prefix that names no override; ignored");
                continue;
            };
            let entry = match event.event_type() {
                EventType::Delete => Entry {
                    target,
                    state: Override::Auto,
                    stamp: Stamp {
                        by: String::new(),
                        at: String::new(),
                    },
                },
                EventType::Put => match value_of(kv.value()) {
                    Ok((state, stamp)) => Entry {
                        target,
                        state,
                        stamp,
                    },
                    Err(e) => {
                        tracing::warn!(%target, error = %e, "etcd: an override value that cannot be read; ignored");
                        continue;
                    }
                },
            };
            self.applied(&entry);
        }
        // With no events, the header says every change up to it was sent.
        if let Some(header) = response.header()
            && response.events().is_empty()
            && !response.created()
        {
            revision = revision.max(header.revision());
        }
        self.synced(revision);
    }

    /// Applies one change read from etcd, logging and counting it when it
    /// changes anything here.
    fn applied(&self, entry: &Entry) {
        if self.overrides.apply(entry.clone()) {
            log_change(entry);
        }
    }

    /// Reads every override and makes them the ones in force.
    async fn resync(&self, client: &mut Client) -> Result<(), String> {
        let dial = self.config.dial_timeout;
        let get = client.get(
            self.overrides_prefix(),
            Some(GetOptions::new().with_prefix()),
        );
        let response = match tokio::time::timeout(dial, get).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(format!("reading the overrides: {e}")),
            Err(_) => return Err(format!("reading the overrides: no answer within {dial:?}")),
        };
        let mut all = Vec::new();
        for kv in response.kvs() {
            let Some(target) = self.target_of(kv.key()) else {
                continue;
            };
            match value_of(kv.value()) {
                Ok((state, stamp)) if state != Override::Auto => all.push(Entry {
                    target,
                    state,
                    stamp,
                }),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%target, error = %e, "etcd: an override value that cannot be read; ignored")
                }
            }
        }
        let _applying = locked(&self.applying);
        for entry in self.overrides.replace_all(all) {
            log_change(&entry);
        }
        let revision = response.header().map_or(0, |h| h.revision());
        // Kept even when the revision is the one read before (a restart).
        self.revision.store(0, Ordering::Relaxed);
        self.synced(revision);
        Ok(())
    }

    /// Records that the overrides reflect etcd at `revision` now.
    fn synced(&self, revision: i64) {
        let now = SystemTime::now();
        let moved = self.revision.swap(revision, Ordering::Relaxed) != revision;
        *locked(&self.last_sync) = Some(now);
        ::metrics::gauge!(CLUSTER_LAST_SYNC).set(unix_seconds(now));
        ::metrics::gauge!(CLUSTER_REVISION).set(revision as f64);
        if moved && let Err(e) = self.persist(revision, now) {
            tracing::error!(error = %e, "cannot keep the cluster state: a restart while etcd is down would start without it");
        }
    }

    fn persist(&self, revision: i64, at: SystemTime) -> std::io::Result<()> {
        let file = StateFile {
            version: 1,
            revision,
            synced_at: unix_seconds(at),
            overrides: self.overrides.entries().iter().map(Saved::of).collect(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        replace_file(&self.file, &text)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The client of endpoint `at`, made now if it is not yet.
    pub(crate) async fn client(&self, at: usize) -> Result<Client, String> {
        let mut held = self.clients.lock().await;
        if let Some(client) = held[at].as_ref() {
            return Ok(client.clone());
        }
        let options = connect_options(&self.config)?;
        let dial = self.config.dial_timeout;
        let url = &self.config.etcd[at];
        let connect = Client::connect([url], Some(options));
        let client = match tokio::time::timeout(dial, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(format!("connecting to {url}: {e}")),
            Err(_) => return Err(format!("connecting to {url}: no answer within {dial:?}")),
        };
        held[at] = Some(client.clone());
        Ok(client)
    }
}

/// How a client of `c`'s endpoints connects: timeouts, TLS, credentials.
pub(crate) fn connect_options(c: &ClusterConfig) -> Result<ConnectOptions, String> {
    let dial = c.dial_timeout;
    // require_leader: a member cut off from its quorum ends the watch
    // instead of keeping it open with nothing coming.
    let mut options = ConnectOptions::new()
        .with_connect_timeout(dial)
        .with_keep_alive(dial, dial)
        .with_require_leader(true);
    let read =
        |path: &Path| std::fs::read(path).map_err(|e| format!("cluster: {}: {e}", path.display()));
    if let (Some(user), Some(file)) = (&c.user, &c.password_file) {
        let password = String::from_utf8(read(file)?)
            .map_err(|_| format!("cluster: {}: not UTF-8 text", file.display()))?;
        options = options.with_user(user.clone(), password.trim_end_matches(['\r', '\n']));
    }
    if c.etcd.iter().any(|u| u.starts_with("https://")) {
        let mut tls = TlsOptions::new();
        tls = match &c.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => tls.with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&c.cert, &c.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

impl Cluster {
    /// Publishes this node's data-center views under a lease and reads
    /// every node's into `quorum`, until shutdown. While etcd is out of
    /// reach the views last read stay in force (never fail closed); on
    /// reconnecting, a fresh read drops the nodes whose lease expired
    /// meanwhile.
    pub async fn run_quorum(self: Arc<Self>, quorum: Arc<Quorum>, shutdown: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let began = Instant::now();
            let ended = tokio::select! {
                ended = self.quorum_session(&quorum) => ended,
                _ = shutdown.cancelled() => return self.leave().await,
            };
            tracing::warn!(error = %ended, retry_in = ?backoff, "data-center quorum: lost etcd, keeping the views last read");
            if began.elapsed() > MAX_BACKOFF {
                backoff = MIN_BACKOFF;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// On a clean stop: revokes the lease, so that this node's views stop
    /// counting now rather than when the lease would expire. Best effort,
    /// within the dial timeout: the lease expires anyway.
    async fn leave(&self) {
        let lease = self.lease.swap(0, Ordering::Relaxed);
        if lease == 0 {
            return;
        }
        // Bounded tighter than a dial: an unreachable etcd must not hold
        // the stop up.
        let limit = self.config.dial_timeout.min(LEAVE_WITHIN);
        let revoke = async {
            let at = self.current.load(Ordering::Relaxed);
            let mut client = self.client(at).await?;
            timed(limit, client.lease_revoke(lease)).await.map(drop)
        };
        match tokio::time::timeout(limit, revoke).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::info!(error = %e, "data-center quorum: the lease is left to expire")
            }
            Err(_) => tracing::info!(
                "data-center quorum: etcd did not answer, the lease is left to expire"
            ),
        }
    }

    /// One connection's life: a lease, this node's key under it, a full
    /// read, then the watch. Returns why it ended.
    async fn quorum_session(&self, quorum: &Quorum) -> String {
        let dial = self.config.dial_timeout;
        let at = self.current.load(Ordering::Relaxed);
        let mut client = match self.client(at).await {
            Ok(client) => client,
            Err(e) => return e,
        };
        let within = |what: &'static str| move |e: String| format!("{what}: {e}");
        let ttl = self.config.lease.as_secs().max(1) as i64;
        let lease = match timed(dial, client.lease_grant(ttl, None)).await {
            Ok(lease) => lease.id(),
            Err(e) => return within("granting a lease")(e),
        };
        self.lease.store(lease, Ordering::Relaxed);
        let mut kept = match KeptLease::start(&mut client, lease, self.config.lease, dial).await {
            Ok(kept) => kept,
            Err(e) => return e,
        };
        // Before the read, so that this node's key is in what it reads.
        if let Err(e) = self.publish(&mut client, quorum, lease).await {
            return e;
        }
        let prefix = self.health_prefix();
        let all = match timed(
            dial,
            client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await
        {
            Ok(all) => all,
            Err(e) => return within("reading the views")(e),
        };
        let mut others = std::collections::HashMap::new();
        for kv in all.kvs() {
            if let Some((node, Some(views))) = self.views_of(kv.key(), Some(kv.value())) {
                others.insert(node, views);
            }
        }
        quorum.replace_others(others);
        let from = all.header().map_or(0, |h| h.revision()) + 1;
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut stream = match timed(dial, client.watch(prefix, Some(options))).await {
            Ok(stream) => stream,
            Err(e) => return within("watching the views")(e),
        };
        loop {
            tokio::select! {
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(response)) => response,
                        Ok(None) => return "the views' watch ended".to_owned(),
                        Err(e) => return format!("watching the views: {e}"),
                    };
                    if response.canceled() {
                        return format!("etcd cancelled the views' watch: {}", response.cancel_reason());
                    }
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let value = (event.event_type() == EventType::Put).then(|| kv.value());
                        if let Some((node, views)) = self.views_of(kv.key(), value) {
                            quorum.set_other(&node, views);
                        }
                    }
                }
                ended = kept.hold() => return ended,
                () = quorum.changed.notified() => {
                    if let Err(e) = self.publish(&mut client, quorum, lease).await {
                        return e;
                    }
                }
            }
        }
    }

    /// Writes this node's views now, under `lease`.
    async fn publish(
        &self,
        client: &mut Client,
        quorum: &Quorum,
        lease: i64,
    ) -> Result<(), String> {
        let Some(mut views) = quorum.own() else {
            return Ok(());
        };
        views.at = Stamp::now(&self.config.node).at;
        let value = serde_json::to_string(&views).map_err(|e| e.to_string())?;
        let key = format!("{}{}", self.health_prefix(), self.config.node);
        let put = client.put(key, value, Some(PutOptions::new().with_lease(lease)));
        timed(self.config.dial_timeout, put)
            .await
            .map(drop)
            .map_err(|e| format!("publishing the views: {e}"))
    }

    fn health_prefix(&self) -> String {
        format!("{}health/", self.config.prefix)
    }

    /// The node a `health/NODE` key names and its views (None: deleted);
    /// None for a key that names no node or a value that cannot be read.
    fn views_of(&self, key: &[u8], value: Option<&[u8]>) -> Option<(String, Option<Published>)> {
        let key = std::str::from_utf8(key).ok()?;
        let node = key.strip_prefix(&self.health_prefix())?;
        if node.is_empty() || node.contains('/') {
            return None;
        }
        let Some(value) = value else {
            return Some((node.to_owned(), None));
        };
        match serde_json::from_slice(value) {
            Ok(views) => Some((node.to_owned(), Some(views))),
            Err(e) => {
                tracing::warn!(%key, error = %e, "etcd: data-center views that cannot be read; ignored");
                None
            }
        }
    }

    fn overrides_prefix(&self) -> String {
        format!("{}overrides/", self.config.prefix)
    }

    /// The key of `target`.
    fn key_of(&self, target: &Target) -> String {
        let prefix = self.overrides_prefix();
        match target {
            Target::Datacenter { name } => format!("{prefix}datacenter/{name}"),
            Target::Backend { addr, pool: None } => format!("{prefix}backend/{addr}"),
            Target::Backend {
                addr,
                pool: Some(pool),
            } => format!("{prefix}pool/{pool}/{addr}"),
        }
    }

    /// The target a key names, if it names one.
    fn target_of(&self, key: &[u8]) -> Option<Target> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.overrides_prefix())?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts[..] {
            ["datacenter", name] if !name.is_empty() => Some(Target::Datacenter {
                name: name.to_owned(),
            }),
            ["backend", addr] => Some(Target::Backend {
                addr: addr.parse::<SocketAddr>().ok()?,
                pool: None,
            }),
            ["pool", pool, addr] if !pool.is_empty() => Some(Target::Backend {
                addr: addr.parse::<SocketAddr>().ok()?,
                pool: Some(pool.to_owned()),
            }),
            _ => None,
        }
    }

    /// Writes one change to etcd: through the watch's endpoint, else each
    /// other in turn, each within the dial timeout.
    async fn write(&self, change: &Entry) -> Result<i64, String> {
        let n = self.config.etcd.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for at in (0..n).map(|k| (first + k) % n) {
            let written = match self.client(at).await {
                Ok(client) => self.write_with(client, change).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(revision) => return Ok(revision),
                Err(e) => errors.push(format!("{}: {e}", self.config.etcd[at])),
            }
        }
        Err(errors.join("; "))
    }

    /// The revision of the write.
    async fn write_with(&self, mut client: Client, change: &Entry) -> Result<i64, String> {
        let key = self.key_of(&change.target);
        let dial = self.config.dial_timeout;
        let done = match change.state {
            Override::Auto => {
                let delete = client.delete(key, None);
                tokio::time::timeout(dial, delete)
                    .await
                    .map(|r| r.map(|r| r.header().map_or(0, |h| h.revision())))
            }
            state => {
                let value = serde_json::json!({
                    "state": state.as_str(),
                    "by": change.stamp.by,
                    "at": change.stamp.at,
                });
                let put = client.put(key, value.to_string(), None);
                tokio::time::timeout(dial, put)
                    .await
                    .map(|r| r.map(|r| r.header().map_or(0, |h| h.revision())))
            }
        };
        match done {
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {dial:?}")),
        }
    }
}

impl OverrideStore for Cluster {
    /// The state last seen, from `cluster.json`: what a node serves with
    /// until it reaches etcd.
    fn load(&self) -> Result<Vec<Entry>, StoreError> {
        let text = match std::fs::read(&self.file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.file.clone(),
                    source,
                });
            }
        };
        let file: StateFile =
            serde_json::from_slice(&text).map_err(|source| StoreError::Format {
                path: self.file.clone(),
                source,
            })?;
        self.revision.store(file.revision, Ordering::Relaxed);
        ::metrics::gauge!(CLUSTER_REVISION).set(file.revision as f64);
        if file.synced_at > 0.0 {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(file.synced_at);
            *locked(&self.last_sync) = Some(at);
            ::metrics::gauge!(CLUSTER_LAST_SYNC).set(file.synced_at);
        }
        Ok(file.overrides.into_iter().map(Saved::entry).collect())
    }

    /// Writes the change to etcd; the watch brings it to the other nodes
    /// (and back here, where it is no change). Blocks: called off the
    /// async workers by [`Overrides::set`].
    fn save(&self, change: &Entry, _all: &[Entry]) -> Result<(), StoreError> {
        let revision = self.runtime.block_on(self.write(change)).map_err(|e| {
            StoreError::NotApplied(format!(
                "etcd did not take the change ({e}); nothing was changed on any node. \
                 While etcd is out of reach, set drain = true in the config and reload"
            ))
        })?;
        // Acts here at once, unless the watch has already gone past it (and
        // so applied it, and perhaps a later change to the same target).
        let _applying = locked(&self.applying);
        if self.revision.load(Ordering::Relaxed) < revision {
            self.overrides.apply(change.clone());
        }
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn node(&self) -> String {
        self.config.node.clone()
    }

    fn describe(&self) -> String {
        format!(
            "etcd {} under {} (last state in {})",
            self.config.etcd.join(", "),
            self.config.prefix,
            self.file.display()
        )
    }
}

/// A watch stream proven alive while nothing changes: progress requests
/// every `dial`, so that a connection that stopped answering (a partition,
/// a member without quorum) is noticed within two dial timeouts.
pub(crate) struct LiveWatch {
    stream: WatchStream,
    ticker: tokio::time::Interval,
    heard: Instant,
    dial: Duration,
}

impl LiveWatch {
    pub(crate) fn new(stream: WatchStream, dial: Duration) -> LiveWatch {
        let mut ticker = tokio::time::interval(dial);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        LiveWatch {
            stream,
            ticker,
            heard: Instant::now(),
            dial,
        }
    }

    /// Adds a watch to the same stream.
    pub(crate) async fn watch(&mut self, key: String, options: WatchOptions) -> Result<(), String> {
        self.stream
            .watch(key, Some(options))
            .await
            .map_err(|e| format!("watch: {e}"))
    }

    /// The next response; why the watch is over when it ended, failed or
    /// went silent.
    pub(crate) async fn next(&mut self) -> Result<WatchResponse, String> {
        loop {
            tokio::select! {
                message = self.stream.message() => {
                    return match message {
                        Ok(Some(response)) => {
                            self.heard = Instant::now();
                            Ok(response)
                        }
                        Ok(None) => Err("the watch stream ended".to_owned()),
                        Err(e) => Err(format!("watch: {e}")),
                    };
                }
                _ = self.ticker.tick() => {
                    if self.heard.elapsed() > self.dial * 2 {
                        return Err(format!("etcd did not answer for {:?}", self.heard.elapsed()));
                    }
                    self.stream
                        .request_progress()
                        .await
                        .map_err(|e| format!("watch: {e}"))?;
                }
            }
        }
    }
}

/// A lease kept alive every third of its TTL.
pub(crate) struct KeptLease {
    keeper: LeaseKeeper,
    kept: LeaseKeepAliveStream,
    renew: tokio::time::Interval,
    renewed: Instant,
    ttl: Duration,
}

impl KeptLease {
    /// Keeps `lease` (of `ttl`) alive through `client`.
    pub(crate) async fn start(
        client: &mut Client,
        lease: i64,
        ttl: Duration,
        dial: Duration,
    ) -> Result<KeptLease, String> {
        let (keeper, kept) = timed(dial, client.lease_keep_alive(lease))
            .await
            .map_err(|e| format!("keeping the lease alive: {e}"))?;
        let mut renew = tokio::time::interval(ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(KeptLease {
            keeper,
            kept,
            renew,
            renewed: Instant::now(),
            ttl,
        })
    }

    /// Renews the lease until it cannot be: returns why. Cancel-safe, so
    /// it may stand in a `select!` beside other work.
    pub(crate) async fn hold(&mut self) -> String {
        loop {
            tokio::select! {
                _ = self.renew.tick() => {
                    if self.renewed.elapsed() > self.ttl {
                        return "the lease was not renewed in time".to_owned();
                    }
                    if let Err(e) = self.keeper.keep_alive().await {
                        return format!("keeping the lease alive: {e}");
                    }
                }
                answer = self.kept.message() => match answer {
                    Ok(Some(a)) if a.ttl() > 0 => self.renewed = Instant::now(),
                    Ok(Some(_)) => return "the lease expired".to_owned(),
                    Ok(None) => return "the lease's stream ended".to_owned(),
                    Err(e) => return format!("keeping the lease alive: {e}"),
                },
            }
        }
    }
}

/// An etcd request given `dial` to answer.
pub(crate) async fn timed<T>(
    dial: Duration,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(dial, request).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {dial:?}")),
    }
}

/// `{"state": ..., "by": ..., "at": ...}`.
fn value_of(bytes: &[u8]) -> Result<(Override, Stamp), String> {
    #[derive(Deserialize)]
    struct Value {
        state: String,
        #[serde(default)]
        by: String,
        #[serde(default)]
        at: String,
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let state =
        Override::parse(&value.state).ok_or_else(|| format!("unknown state {:?}", value.state))?;
    Ok((
        state,
        Stamp {
            by: value.by,
            at: value.at,
        },
    ))
}

fn log_change(entry: &Entry) {
    tracing::warn!(
        target = %entry.target,
        state = entry.state.as_str(),
        by = %entry.stamp.by,
        at = %entry.stamp.at,
        "runtime override set through etcd"
    );
    ::metrics::counter!(
        crate::metrics::OVERRIDES,
        "kind" => entry.target.kind(),
        "state" => entry.state.as_str()
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(dir: &Path) -> Arc<Cluster> {
        let config = ClusterConfig {
            dial_timeout: Duration::from_millis(100),
            lease: Duration::from_secs(2),
            ..ClusterConfig::with_defaults(vec!["http://127.0.0.1:1".into()], "a".into())
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Cluster::new(
            config,
            dir,
            Arc::new(Overrides::default()),
            runtime.handle().clone(),
        )
    }

    #[test]
    fn keys_name_their_targets_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path());
        let targets = [
            Target::Datacenter {
                name: "eu-west".into(),
            },
            Target::Backend {
                addr: "10.0.0.1:80".parse().unwrap(),
                pool: None,
            },
            Target::Backend {
                addr: "[2001:db8::1]:443".parse().unwrap(),
                pool: Some("web".into()),
            },
        ];
        for target in targets {
            let key = c.key_of(&target);
            assert_eq!(c.target_of(key.as_bytes()), Some(target), "{key}");
        }
        for key in [
            "/geolb/overrides/datacenter/",
            "/geolb/overrides/backend/not-an-addr",
            "/geolb/overrides/pool//10.0.0.1:80",
            "/geolb/overrides/datacenter/a/b",
            "/other/overrides/datacenter/x",
            "/geolb/nodes/a",
        ] {
            assert_eq!(c.target_of(key.as_bytes()), None, "{key}");
        }
    }

    #[test]
    fn view_keys_name_a_node_and_bad_values_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path());
        let value = br#"{"datacenter":"eu","views":{"eu":{"up":true,"source":"pools"}}}"#;
        let (node, views) = c.views_of(b"/geolb/health/eu-1", Some(value)).unwrap();
        assert_eq!(node, "eu-1");
        assert_eq!(views.unwrap().datacenter.as_deref(), Some("eu"));
        assert_eq!(
            c.views_of(b"/geolb/health/eu-1", None),
            Some(("eu-1".to_owned(), None)),
            "a deleted key: the node stops counting"
        );
        for key in ["/geolb/health/", "/geolb/health/a/b", "/geolb/overrides/x"] {
            assert_eq!(c.views_of(key.as_bytes(), None), None, "{key}");
        }
        let bad = br#"{"views":{"eu":{"up":"yes","source":"pools"}}}"#;
        assert_eq!(c.views_of(b"/geolb/health/eu-1", Some(bad)), None);
    }

    #[test]
    fn values_are_read_strictly() {
        let (state, stamp) =
            value_of(br#"{"state":"drain","by":"eu-west-1","at":"2026-12-01T03:00:00Z"}"#).unwrap();
        assert_eq!(state, Override::Drain);
        assert_eq!(stamp.by, "eu-west-1");
        assert!(value_of(br#"{"state":"sideways"}"#).is_err());
        assert!(value_of(b"drain").is_err());
    }

    #[test]
    fn the_state_file_keeps_overrides_and_revision() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path());
        let dc = Target::Datacenter { name: "one".into() };
        c.overrides.apply(Entry {
            target: dc.clone(),
            state: Override::Down,
            stamp: Stamp::now("b"),
        });
        c.synced(42);
        let again = cluster(dir.path());
        let loaded = again.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].target, dc);
        assert_eq!(loaded[0].stamp.by, "b");
        assert_eq!(again.status().revision, 42);
        assert!(again.status().last_sync.is_some());
    }
}
