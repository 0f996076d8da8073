//! Runtime overrides from the admin API (`drain`, `down`, `auto`), for
//! drills and incidents that must not wait for a config edit.
//!
//! A data center is overridden by name; a backend by address, either in
//! every pool that has it or in one pool. Each override is a cell that
//! snapshots reference, so it acts at once and survives reloads; the set
//! of overrides is also kept by an [`OverrideStore`] (a state file by
//! default, etcd with `[cluster]`: `crate::cluster`) so that a restart or
//! an upgrade does not forget a drain made in the middle of an incident.
//! Each override in force carries a [`Stamp`]: who set it and when.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::locked;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Override {
    Auto,
    /// No new work; in-flight work finishes.
    Drain,
    /// Treated as failing every health check.
    Down,
}

impl Override {
    pub fn as_str(self) -> &'static str {
        match self {
            Override::Auto => "auto",
            Override::Drain => "drain",
            Override::Down => "down",
        }
    }

    pub fn parse(s: &str) -> Option<Override> {
        match s {
            "auto" => Some(Override::Auto),
            "drain" => Some(Override::Drain),
            "down" => Some(Override::Down),
            _ => None,
        }
    }

    pub fn load(cell: &AtomicU8) -> Override {
        match cell.load(Ordering::Relaxed) {
            1 => Override::Drain,
            2 => Override::Down,
            _ => Override::Auto,
        }
    }

    fn store(self, cell: &AtomicU8) {
        cell.store(self as u8, Ordering::Relaxed);
    }
}

/// What an override applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    Datacenter {
        name: String,
    },
    /// `pool: None`: every pool with that backend.
    Backend {
        addr: SocketAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
}

impl Target {
    /// `datacenter` or `backend`, for labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Datacenter { .. } => "datacenter",
            Target::Backend { .. } => "backend",
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Datacenter { name } => write!(f, "data center {name}"),
            Target::Backend { addr, pool: None } => write!(f, "backend {addr} (all pools)"),
            Target::Backend {
                addr,
                pool: Some(pool),
            } => write!(f, "backend {addr} (pool {pool})"),
        }
    }
}

/// Who set an override and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The node (`[cluster] node`), or `local` without a cluster.
    pub by: String,
    /// RFC 3339, UTC.
    pub at: String,
}

impl Stamp {
    pub fn now(by: &str) -> Stamp {
        Stamp {
            by: by.to_owned(),
            at: crate::logging::rfc3339_utc(std::time::SystemTime::now()),
        }
    }
}

/// One override in force, as stores keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub target: Target,
    pub state: Override,
    pub stamp: Stamp,
}

/// Where the overrides outlive the process.
pub trait OverrideStore: Send + Sync {
    /// What was saved last; empty when nothing was.
    fn load(&self) -> Result<Vec<Entry>, StoreError>;
    /// Records `change` (`auto`: the override is gone); `all` is every
    /// override in force with it.
    fn save(&self, change: &Entry, all: &[Entry]) -> Result<(), StoreError>;
    /// Whether other nodes read it too. A change such a store cannot take
    /// is not made here either: a node acting alone would disagree with
    /// the others, and lose the change when it next reads the store. A
    /// shared store makes a change it took act here itself
    /// ([`Overrides::apply`]): it alone knows whether a later change read
    /// from it has superseded this one meanwhile.
    fn shared(&self) -> bool {
        false
    }
    /// The `by` of the changes made through this node.
    fn node(&self) -> String {
        "local".to_owned()
    }
    /// For logs and the admin API's answers.
    fn describe(&self) -> String;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A shared store refused or did not answer: the change was not made.
    #[error("{0}")]
    NotApplied(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not an override state file: {source}", path.display())]
    Format {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// `overrides.json` in the state directory, replaced whole on every change
/// (written beside it, flushed to disk, renamed over it), so a crash
/// leaves either the old file or the new one.
pub struct FileStore {
    path: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    overrides: Vec<Saved>,
}

/// An override as state files keep it (`overrides.json`, `cluster.json`).
#[derive(Serialize, Deserialize)]
pub(crate) struct Saved {
    #[serde(flatten)]
    target: Target,
    state: Override,
    /// Absent in files written before overrides were stamped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<String>,
}

impl Saved {
    pub(crate) fn of(e: &Entry) -> Saved {
        Saved {
            target: e.target.clone(),
            state: e.state,
            by: Some(e.stamp.by.clone()),
            at: Some(e.stamp.at.clone()),
        }
    }

    pub(crate) fn entry(self) -> Entry {
        Entry {
            target: self.target,
            state: self.state,
            stamp: Stamp {
                by: self.by.unwrap_or_default(),
                at: self.at.unwrap_or_default(),
            },
        }
    }
}

/// Replaces the file at `path` whole with `bytes`: written beside it,
/// flushed to disk, renamed over it, so a crash leaves either the old file
/// or the new one.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let write = || -> io::Result<()> {
        let mut out = fs::File::create(&temporary)?;
        out.write_all(bytes)?;
        out.sync_all()?;
        fs::rename(&temporary, path)?;
        // The rename itself is durable once the directory is.
        fs::File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&temporary);
    })
}

impl FileStore {
    pub fn new(state_dir: &Path) -> FileStore {
        FileStore {
            path: state_dir.join("overrides.json"),
        }
    }

    fn io(&self, source: io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl OverrideStore for FileStore {
    fn load(&self) -> Result<Vec<Entry>, StoreError> {
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let file: StateFile =
            serde_json::from_slice(&text).map_err(|source| StoreError::Format {
                path: self.path.clone(),
                source,
            })?;
        Ok(file.overrides.into_iter().map(Saved::entry).collect())
    }

    fn save(&self, _change: &Entry, all: &[Entry]) -> Result<(), StoreError> {
        let file = StateFile {
            version: 1,
            overrides: all.iter().map(Saved::of).collect(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| self.io(io::Error::other(e)))?;
        replace_file(&self.path, &text).map_err(|e| self.io(e))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Every override cell, by target; entries never go away (a cell is tiny,
/// and a target removed by one reload may come back with the next).
pub struct Overrides {
    cells: Mutex<HashMap<Target, Arc<AtomicU8>>>,
    /// Who set each override in force, and when.
    stamps: Mutex<HashMap<Target, Stamp>>,
    store: Mutex<Option<Arc<dyn OverrideStore>>>,
}

impl Default for Overrides {
    fn default() -> Self {
        Overrides {
            cells: Mutex::new(HashMap::new()),
            stamps: Mutex::new(HashMap::new()),
            store: Mutex::new(None),
        }
    }
}

impl Overrides {
    /// The cell snapshots read for `target`.
    pub fn cell(&self, target: &Target) -> Arc<AtomicU8> {
        locked(&self.cells)
            .entry(target.clone())
            .or_default()
            .clone()
    }

    /// The overrides in force (not `auto`), in a stable order.
    pub fn current(&self) -> Vec<(Target, Override)> {
        let mut all: Vec<(Target, Override)> = locked(&self.cells)
            .iter()
            .map(|(t, cell)| (t.clone(), Override::load(cell)))
            .filter(|(_, state)| *state != Override::Auto)
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The overrides in force with their stamps, in a stable order.
    pub fn entries(&self) -> Vec<Entry> {
        let stamps = locked(&self.stamps);
        self.current()
            .into_iter()
            .map(|(target, state)| Entry {
                stamp: stamps.get(&target).cloned().unwrap_or_else(|| Stamp {
                    by: String::new(),
                    at: String::new(),
                }),
                target,
                state,
            })
            .collect()
    }

    /// Who set the override of `target` in force, and when.
    pub fn stamp(&self, target: &Target) -> Option<Stamp> {
        locked(&self.stamps).get(target).cloned()
    }

    /// Keeps the overrides in `store` from now on (a reload may move the
    /// state directory).
    pub fn set_store(&self, store: Arc<dyn OverrideStore>) {
        *locked(&self.store) = Some(store);
    }

    /// Whether the store in use is shared with other nodes (then a reload
    /// leaves it in place).
    pub fn shared(&self) -> bool {
        locked(&self.store).as_ref().is_some_and(|s| s.shared())
    }

    /// Takes back what the store kept (at start-up).
    pub fn restore(&self) -> Result<usize, StoreError> {
        let Some(store) = locked(&self.store).clone() else {
            return Ok(0);
        };
        let saved = store.load()?;
        let n = saved.len();
        self.replace_all(saved);
        Ok(n)
    }

    /// Sets `target` to `state`, stamped with this node and now, and saves
    /// it. With a local store the override acts at once, even when saving
    /// fails (the error says it will not survive a restart); with a shared
    /// one it acts only once the store took it, the store applying it
    /// ([`StoreError::NotApplied`] otherwise). Blocking: call it off the
    /// async workers.
    pub fn set(&self, target: &Target, state: Override) -> Result<(), StoreError> {
        // One writer at a time, so changes are saved in their order.
        let store = locked(&self.store);
        let by = store
            .as_ref()
            .map_or_else(|| "local".to_owned(), |s| s.node());
        let change = Entry {
            target: target.clone(),
            state,
            stamp: Stamp::now(&by),
        };
        match store.as_ref() {
            Some(shared) if shared.shared() => {
                let mut all = self.entries();
                all.retain(|e| e.target != *target);
                all.extend((state != Override::Auto).then(|| change.clone()));
                shared.save(&change, &all)
            }
            Some(local) => {
                self.apply(change.clone());
                local.save(&change, &self.entries())
            }
            None => {
                self.apply(change);
                Ok(())
            }
        }
    }

    /// Makes `entry` the override of its target without saving it (a
    /// change read from a shared store); whether anything changed.
    pub fn apply(&self, entry: Entry) -> bool {
        let cell = self.cell(&entry.target);
        let mut stamps = locked(&self.stamps);
        let changed = Override::load(&cell) != entry.state;
        entry.state.store(&cell);
        match entry.state {
            Override::Auto => stamps.remove(&entry.target),
            _ => stamps.insert(entry.target, entry.stamp),
        };
        changed
    }

    /// Makes `all` the overrides in force: every other target goes back
    /// to `auto`. The changes made, each as its new entry.
    pub fn replace_all(&self, all: Vec<Entry>) -> Vec<Entry> {
        let mut changes = Vec::new();
        for (target, state) in self.current() {
            if !all.iter().any(|e| e.target == target) {
                let back = Entry {
                    target,
                    state: Override::Auto,
                    stamp: Stamp {
                        by: String::new(),
                        at: String::new(),
                    },
                };
                if state != Override::Auto && self.apply(back.clone()) {
                    changes.push(back);
                }
            }
        }
        for entry in all {
            if self.apply(entry.clone()) {
                changes.push(entry);
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(addr: &str, pool: Option<&str>) -> Target {
        Target::Backend {
            addr: addr.parse().unwrap(),
            pool: pool.map(str::to_owned),
        }
    }

    #[test]
    fn the_state_file_round_trips_and_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(&dir.path().join("state"));
        assert!(store.load().unwrap().is_empty(), "no file: nothing saved");
        let entry = |target, state| Entry {
            target,
            state,
            stamp: Stamp::now("local"),
        };
        let saved = vec![
            entry(
                Target::Datacenter {
                    name: "eu-west".into(),
                },
                Override::Down,
            ),
            entry(backend("10.0.0.5:8080", None), Override::Drain),
            entry(backend("10.0.0.5:8080", Some("api")), Override::Down),
        ];
        store.save(&saved[0], &saved).unwrap();
        assert_eq!(store.load().unwrap(), saved);
        store.save(&saved[0], &saved[..1]).unwrap();
        assert_eq!(store.load().unwrap(), saved[..1]);
        let names: Vec<_> = fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["overrides.json"], "no temporary file left");
    }

    #[test]
    fn a_damaged_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("overrides.json"),
            b"{\"version\": 1, \"overr",
        )
        .unwrap();
        let err = FileStore::new(dir.path()).load().unwrap_err().to_string();
        assert!(
            err.contains("overrides.json: not an override state file"),
            "{err}"
        );
    }

    #[test]
    fn set_acts_saves_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides::default();
        overrides.set_store(Arc::new(FileStore::new(dir.path())));
        let dc = Target::Datacenter { name: "one".into() };
        let cell = overrides.cell(&dc);
        overrides.set(&dc, Override::Drain).unwrap();
        assert_eq!(Override::load(&cell), Override::Drain);
        overrides
            .set(&backend("127.0.0.1:1", Some("p")), Override::Down)
            .unwrap();

        let after_restart = Overrides::default();
        after_restart.set_store(Arc::new(FileStore::new(dir.path())));
        assert_eq!(after_restart.restore().unwrap(), 2);
        assert_eq!(after_restart.current(), overrides.current());
        assert_eq!(after_restart.entries(), overrides.entries(), "stamps kept");
        assert_eq!(overrides.stamp(&dc).unwrap().by, "local");
        overrides.set(&dc, Override::Auto).unwrap();
        assert_eq!(overrides.stamp(&dc), None, "auto leaves no stamp");
        assert_eq!(overrides.current().len(), 1, "auto removes it");
    }

    #[test]
    fn a_store_that_cannot_write_still_lets_the_override_act() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, b"").unwrap();
        let overrides = Overrides::default();
        overrides.set_store(Arc::new(FileStore::new(&blocker)));
        let dc = Target::Datacenter { name: "one".into() };
        assert!(overrides.set(&dc, Override::Down).is_err());
        assert_eq!(Override::load(&overrides.cell(&dc)), Override::Down);
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;

    /// A shared store that refuses every change, as etcd out of reach.
    struct Unreachable;

    impl OverrideStore for Unreachable {
        fn load(&self) -> Result<Vec<Entry>, StoreError> {
            Ok(Vec::new())
        }
        fn save(&self, _: &Entry, _: &[Entry]) -> Result<(), StoreError> {
            Err(StoreError::NotApplied("etcd unreachable".into()))
        }
        fn shared(&self) -> bool {
            true
        }
        fn describe(&self) -> String {
            "nowhere".into()
        }
    }

    #[test]
    fn a_shared_store_that_refuses_leaves_the_override_unmade() {
        let overrides = Overrides::default();
        overrides.set_store(Arc::new(Unreachable));
        let dc = Target::Datacenter { name: "one".into() };
        assert!(matches!(
            overrides.set(&dc, Override::Drain),
            Err(StoreError::NotApplied(_))
        ));
        assert_eq!(Override::load(&overrides.cell(&dc)), Override::Auto);
    }

    #[test]
    fn replace_all_sets_back_what_is_gone_and_reports_only_changes() {
        let overrides = Overrides::default();
        let (one, two) = (
            Target::Datacenter { name: "one".into() },
            Target::Datacenter { name: "two".into() },
        );
        let entry = |target: &Target, state| Entry {
            target: target.clone(),
            state,
            stamp: Stamp::now("a"),
        };
        assert_eq!(
            overrides
                .replace_all(vec![entry(&one, Override::Drain)])
                .len(),
            1
        );
        assert_eq!(
            overrides.replace_all(vec![entry(&one, Override::Drain)]),
            [],
            "the same state again is no change"
        );
        let changes = overrides.replace_all(vec![entry(&two, Override::Down)]);
        assert_eq!(changes.len(), 2);
        assert_eq!(overrides.current(), [(two.clone(), Override::Down)]);
        assert_eq!(overrides.stamp(&one), None);
        assert_eq!(overrides.stamp(&two).unwrap().by, "a");
    }
}
