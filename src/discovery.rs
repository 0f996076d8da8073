//! Backend discovery: pools whose backends register themselves in etcd.
//!
//! A pool with `discovery = { prefix = "pools/web/" }` takes, beside its
//! static backends, every backend registered under `[cluster] prefix` +
//! that prefix. A registration is one key per backend address,
//!
//! ```text
//! /geolb/pools/web/10.0.0.5:8080 = {"address": "10.0.0.5:8080", "weight": 1,
//!                                   "node": "web-3", "at": "2026-12-01T05:00:00Z"}
//! ```
//!
//! put under the registering process's lease (`geolb register` does it),
//! so a web server that dies leaves when its lease expires. `address` must
//! be the key's last segment; `weight` (1 to 1000000) defaults to 1;
//! `node` and `at` are shown in `/status` only. A value that cannot be
//! read is logged and skipped, never served.
//!
//! [`Discovered`] holds what was read, by prefix: the data path never
//! reads it. Each change is compiled into a new snapshot (`reload::
//! rediscover`), so requests keep one load of one snapshot. It is kept in
//! `state_dir/discovery.json` when it changes: a node that restarts while
//! etcd is out of reach serves the backends last seen (never fails
//! closed). [`run`] watches etcd: a full read of each prefix on every
//! connection, then a watch from that read's revision.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use etcd_client::{EventType, GetOptions, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, LiveWatch};
use crate::locked;
use crate::metrics::DISCOVERY_WATCH_EVENTS;
use crate::overrides::replace_file;

/// The heaviest weight a registration may carry (as a static backend's).
pub const MAX_WEIGHT: u32 = 1_000_000;
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One registered backend, as its value says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub address: SocketAddr,
    #[serde(default = "one")]
    pub weight: u32,
    /// Who registered it (`geolb register --node`, the host name).
    #[serde(default)]
    pub node: String,
    /// When, RFC 3339.
    #[serde(default)]
    pub at: String,
}

fn one() -> u32 {
    1
}

impl Registered {
    /// The value of a key `...ADDR`: strict, so that a typo is said in
    /// the log rather than served.
    pub fn parse(key_addr: SocketAddr, value: &[u8]) -> Result<Registered, String> {
        let r: Registered = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        if r.address != key_addr {
            return Err(format!("address {} is not the key's {key_addr}", r.address));
        }
        if r.weight == 0 || r.weight > MAX_WEIGHT {
            return Err(format!("weight {} is not 1 to {MAX_WEIGHT}", r.weight));
        }
        Ok(r)
    }

    pub fn value(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The address a key names under `full_prefix`, if it names one.
pub fn key_addr(full_prefix: &str, key: &[u8]) -> Option<SocketAddr> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(full_prefix)?
        .parse()
        .ok()
}

/// The backends registered under each prefix (relative to `[cluster]
/// prefix`), by address.
pub type Sets = BTreeMap<String, BTreeMap<SocketAddr, Registered>>;

/// What a watch read: changes to the sets, applied together.
#[derive(Debug)]
pub enum Change {
    /// A full read of one prefix.
    Replace(String, BTreeMap<SocketAddr, Registered>),
    Put(String, Registered),
    Delete(String, SocketAddr),
}

/// The discovered backends of every prefix, and who wants to know.
pub struct Discovered {
    sets: ArcSwap<Sets>,
    /// Bumped on every change of `sets`.
    changed: watch::Sender<u64>,
    /// The prefixes the running config's pools ask for.
    wanted: watch::Sender<Vec<String>>,
    /// `state_dir/discovery.json`, once a cluster is configured.
    file: std::sync::Mutex<Option<PathBuf>>,
}

impl Default for Discovered {
    fn default() -> Self {
        Discovered {
            sets: ArcSwap::from_pointee(Sets::new()),
            changed: watch::channel(0).0,
            wanted: watch::channel(Vec::new()).0,
            file: std::sync::Mutex::new(None),
        }
    }
}

/// What `discovery.json` holds.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    saved_at: String,
    prefixes: BTreeMap<String, Vec<Registered>>,
}

impl Discovered {
    pub fn current(&self) -> Arc<Sets> {
        self.sets.load_full()
    }

    /// Told of every change (the value means nothing).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The prefixes the config asks for; the watch follows them.
    pub fn want(&self, mut prefixes: Vec<String>) {
        prefixes.sort();
        prefixes.dedup();
        self.wanted.send_if_modified(|w| {
            let moved = *w != prefixes;
            *w = prefixes;
            moved
        });
    }

    fn wanted(&self) -> watch::Receiver<Vec<String>> {
        self.wanted.subscribe()
    }

    /// Applies `changes` at once; says (and tells subscribers) whether
    /// anything changed. Each change is logged.
    pub fn apply(&self, changes: Vec<Change>) -> bool {
        if changes.is_empty() {
            return false;
        }
        let mut sets = (*self.sets.load_full()).clone();
        let mut moved = false;
        for change in changes {
            moved |= apply_one(&mut sets, change);
        }
        if moved {
            self.sets.store(Arc::new(sets));
            self.changed.send_modify(|n| *n += 1);
        }
        moved
    }

    /// Keeps the sets in `state_dir/discovery.json` from now on, and reads
    /// what the last process kept there: the backends to serve until etcd
    /// answers. Returns how many were read.
    pub fn restore(&self, state_dir: &Path) -> Result<usize, String> {
        let file = state_dir.join("discovery.json");
        *locked(&self.file) = Some(file.clone());
        let text = match std::fs::read(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        let saved: StateFile =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut count = 0;
        let changes = saved
            .prefixes
            .into_iter()
            .map(|(prefix, list)| {
                count += list.len();
                Change::Replace(prefix, list.into_iter().map(|r| (r.address, r)).collect())
            })
            .collect();
        self.apply(changes);
        Ok(count)
    }

    /// Writes the sets to the state file (blocking: not on the async
    /// workers).
    pub fn persist(&self) {
        let Some(file) = locked(&self.file).clone() else {
            return;
        };
        let state = StateFile {
            version: 1,
            saved_at: crate::logging::rfc3339_utc(std::time::SystemTime::now()),
            prefixes: self
                .current()
                .iter()
                .map(|(p, set)| (p.clone(), set.values().cloned().collect()))
                .collect(),
        };
        let written = serde_json::to_vec_pretty(&state)
            .map_err(std::io::Error::other)
            .and_then(|text| replace_file(&file, &text));
        if let Err(e) = written {
            tracing::error!(file = %file.display(), error = %e, "cannot keep the discovered backends: a restart while etcd is down would start without them");
        }
    }
}

fn apply_one(sets: &mut Sets, change: Change) -> bool {
    match change {
        Change::Replace(prefix, set) => {
            let old = sets.get(&prefix);
            if old == Some(&set) {
                return false;
            }
            let empty = BTreeMap::new();
            let old = old.unwrap_or(&empty);
            for addr in old.keys().filter(|a| !set.contains_key(a)) {
                tracing::info!(%prefix, backend = %addr, "discovered backend gone (read again)");
            }
            for r in set.values().filter(|r| old.get(&r.address) != Some(r)) {
                tracing::info!(%prefix, backend = %r.address, weight = r.weight, node = %r.node, "discovered backend");
            }
            sets.insert(prefix, set);
            true
        }
        Change::Put(prefix, r) => {
            let set = sets.entry(prefix.clone()).or_default();
            if set.get(&r.address) == Some(&r) {
                return false;
            }
            tracing::info!(%prefix, backend = %r.address, weight = r.weight, node = %r.node, "discovered backend");
            set.insert(r.address, r);
            true
        }
        Change::Delete(prefix, addr) => {
            let gone = sets.get_mut(&prefix).and_then(|s| s.remove(&addr));
            if gone.is_some() {
                tracing::info!(%prefix, backend = %addr, "discovered backend gone");
            }
            gone.is_some()
        }
    }
}

/// Watches the prefixes the config asks for until shutdown, reconnecting
/// with backoff (each endpoint in turn, as the overrides' watch does);
/// a change of those prefixes starts a new session.
pub async fn run(cluster: Arc<Cluster>, discovered: Arc<Discovered>, shutdown: CancellationToken) {
    // At 0 from the start, as the cluster's own series.
    ::metrics::counter!(DISCOVERY_WATCH_EVENTS).absolute(0);
    let mut wanted = discovered.wanted();
    let mut backoff = MIN_BACKOFF;
    let mut at = 0;
    loop {
        let prefixes = wanted.borrow_and_update().clone();
        if prefixes.is_empty() {
            tokio::select! {
                _ = wanted.changed() => continue,
                _ = shutdown.cancelled() => return,
            }
        }
        let began = Instant::now();
        let ended = tokio::select! {
            ended = session(&cluster, &discovered, &prefixes, at) => ended,
            _ = wanted.changed() => continue,
            _ = shutdown.cancelled() => return,
        };
        at = (at + 1) % cluster.config().etcd.len();
        if began.elapsed() > MAX_BACKOFF {
            backoff = MIN_BACKOFF;
        }
        tracing::warn!(error = %ended, retry_in = ?backoff, "discovery: lost etcd, serving the backends last seen");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: a full read of every prefix, then one watch
/// stream carrying a watch per prefix from its read's revision.
async fn session(
    cluster: &Cluster,
    discovered: &Discovered,
    prefixes: &[String],
    at: usize,
) -> String {
    let config = cluster.config();
    let dial = config.dial_timeout;
    let full = |p: &str| format!("{}{p}", config.prefix);
    let mut client = match cluster.client(at).await {
        Ok(client) => client,
        Err(e) => return e,
    };
    let mut reads = Vec::with_capacity(prefixes.len());
    let mut changes = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        let get = client.get(full(prefix), Some(GetOptions::new().with_prefix()));
        let response = match tokio::time::timeout(dial, get).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return format!("reading {}: {e}", full(prefix)),
            Err(_) => return format!("reading {}: no answer within {dial:?}", full(prefix)),
        };
        let set = response
            .kvs()
            .iter()
            .filter_map(|kv| registration(&full(prefix), kv.key(), kv.value()))
            .map(|r| (r.address, r))
            .collect();
        changes.push(Change::Replace(prefix.clone(), set));
        reads.push(response.header().map_or(0, |h| h.revision()));
    }
    discovered.apply(changes);
    let options = |revision: i64| {
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
            .with_progress_notify()
    };
    let watch = client.watch(full(&prefixes[0]), Some(options(reads[0])));
    let stream = match tokio::time::timeout(dial, watch).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return format!("watch: {e}"),
        Err(_) => return format!("watch: no answer within {dial:?}"),
    };
    let mut watch = LiveWatch::new(stream, dial);
    for (prefix, &revision) in prefixes.iter().zip(&reads).skip(1) {
        if let Err(e) = watch.watch(full(prefix), options(revision)).await {
            return e;
        }
    }
    tracing::info!(prefixes = ?prefixes, "discovery: watching etcd");
    loop {
        let response = match watch.next().await {
            Ok(response) => response,
            Err(e) => return e,
        };
        if response.canceled() {
            // Compacted past the read, or refused: read again.
            return format!("etcd cancelled the watch: {}", response.cancel_reason());
        }
        let mut changes = Vec::new();
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            ::metrics::counter!(DISCOVERY_WATCH_EVENTS).increment(1);
            let Some((prefix, addr)) = prefixes
                .iter()
                .find_map(|p| Some((p, key_addr(&full(p), kv.key())?)))
            else {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "discovery: a key that names no backend address; ignored");
                continue;
            };
            match event.event_type() {
                EventType::Delete => changes.push(Change::Delete(prefix.clone(), addr)),
                EventType::Put => match registration(&full(prefix), kv.key(), kv.value()) {
                    Some(r) => changes.push(Change::Put(prefix.clone(), r)),
                    // A bad value in place of a good one: the old
                    // registration is not vouched for any more.
                    None => changes.push(Change::Delete(prefix.clone(), addr)),
                },
            }
        }
        discovered.apply(changes);
    }
}

/// The registration a key and value hold; None (logged) when they hold
/// none.
fn registration(full_prefix: &str, key: &[u8], value: &[u8]) -> Option<Registered> {
    let shown = || String::from_utf8_lossy(key).into_owned();
    let Some(addr) = key_addr(full_prefix, key) else {
        tracing::warn!(key = %shown(), "discovery: a key that names no backend address (PREFIX/IP:PORT); ignored");
        return None;
    };
    Registered::parse(addr, value)
        .inspect_err(|e| {
            tracing::warn!(key = %shown(), error = %e, "discovery: a registration that cannot be read; ignored");
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(addr: &str, weight: u32) -> Registered {
        Registered {
            address: addr.parse().unwrap(),
            weight,
            node: "web-1".into(),
            at: "2026-12-01T05:00:00Z".into(),
        }
    }

    #[test]
    fn values_are_read_strictly() {
        let addr: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let r = Registered::parse(addr, br#"{"address":"10.0.0.5:8080"}"#).unwrap();
        assert_eq!((r.weight, r.node.as_str()), (1, ""));
        let full = reg("10.0.0.5:8080", 7);
        assert_eq!(Registered::parse(addr, full.value().as_bytes()), Ok(full));
        for bad in [
            &br#"{"address":"10.0.0.6:8080"}"#[..],
            br#"{"address":"10.0.0.5:8080","weight":0}"#,
            br#"{"address":"10.0.0.5:8080","weight":1000001}"#,
            br#"{"address":"10.0.0.5"}"#,
            b"10.0.0.5:8080",
            b"",
        ] {
            assert!(Registered::parse(addr, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_name_an_address_under_their_prefix() {
        let p = "/geolb/pools/web/";
        assert_eq!(
            key_addr(p, b"/geolb/pools/web/[2001:db8::1]:443"),
            Some("[2001:db8::1]:443".parse().unwrap())
        );
        for key in [
            "/geolb/pools/web/",
            "/geolb/pools/web/x/10.0.0.1:80",
            "/geolb/pools/web/10.0.0.1",
            "/geolb/pools/web2/10.0.0.1:80",
        ] {
            assert_eq!(key_addr(p, key.as_bytes()), None, "{key}");
        }
    }

    #[test]
    fn changes_tell_subscribers_only_when_something_moved() {
        let d = Discovered::default();
        let mut rx = d.subscribe();
        let web = "pools/web/".to_owned();
        assert!(d.apply(vec![Change::Put(web.clone(), reg("10.0.0.1:80", 1))]));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(!d.apply(vec![Change::Put(web.clone(), reg("10.0.0.1:80", 1))]));
        assert!(!d.apply(vec![Change::Delete(
            web.clone(),
            "10.0.0.9:80".parse().unwrap()
        )]));
        assert!(!rx.has_changed().unwrap(), "a repeat changes nothing");
        assert!(d.apply(vec![Change::Put(web.clone(), reg("10.0.0.1:80", 2))]));
        let set = d.current()[&web].clone();
        assert_eq!(set.values().next().unwrap().weight, 2);
        assert!(d.apply(vec![Change::Replace(web.clone(), BTreeMap::new())]));
        assert!(d.current()[&web].is_empty());
    }

    #[test]
    fn the_state_file_keeps_the_sets() {
        let dir = tempfile::tempdir().unwrap();
        let d = Discovered::default();
        assert_eq!(d.restore(dir.path()), Ok(0));
        d.apply(vec![
            Change::Put("pools/web/".into(), reg("10.0.0.1:80", 3)),
            Change::Put("pools/api/".into(), reg("[2001:db8::1]:443", 1)),
        ]);
        d.persist();
        let again = Discovered::default();
        assert_eq!(again.restore(dir.path()), Ok(2));
        assert_eq!(again.current(), d.current());
        std::fs::write(dir.path().join("discovery.json"), "{").unwrap();
        assert!(Discovered::default().restore(dir.path()).is_err());
    }
}
