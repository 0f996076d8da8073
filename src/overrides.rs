//! Runtime overrides from the admin API (`drain`, `down`, `auto`), for
//! drills and incidents that must not wait for a config edit.
//!
//! A data center is overridden by name; a backend by address, either in
//! every pool that has it or in one pool. Each override is a cell that
//! snapshots reference, so it acts at once and survives reloads; the set
//! of overrides is also kept by an [`OverrideStore`] (a state file by
//! default) so that a restart or an upgrade does not forget a drain made
//! in the middle of an incident.

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

/// Where the overrides outlive the process.
pub trait OverrideStore: Send + Sync {
    /// What was saved last; empty when nothing was.
    fn load(&self) -> Result<Vec<(Target, Override)>, StoreError>;
    fn save(&self, overrides: &[(Target, Override)]) -> Result<(), StoreError>;
    /// For logs and the admin API's answers.
    fn describe(&self) -> String;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
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

#[derive(Serialize, Deserialize)]
struct Saved {
    #[serde(flatten)]
    target: Target,
    state: Override,
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
    fn load(&self) -> Result<Vec<(Target, Override)>, StoreError> {
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
        Ok(file
            .overrides
            .into_iter()
            .map(|s| (s.target, s.state))
            .collect())
    }

    fn save(&self, overrides: &[(Target, Override)]) -> Result<(), StoreError> {
        let file = StateFile {
            version: 1,
            overrides: overrides
                .iter()
                .map(|(target, state)| Saved {
                    target: target.clone(),
                    state: *state,
                })
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| self.io(io::Error::other(e)))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let temporary = self.path.with_extension("json.new");
        let write = || -> io::Result<()> {
            let mut out = fs::File::create(&temporary)?;
            out.write_all(&text)?;
            out.sync_all()?;
            fs::rename(&temporary, &self.path)?;
            // The rename itself is durable once the directory is.
            fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&temporary);
            self.io(e)
        })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Every override cell, by target; entries never go away (a cell is tiny,
/// and a target removed by one reload may come back with the next).
pub struct Overrides {
    cells: Mutex<HashMap<Target, Arc<AtomicU8>>>,
    store: Mutex<Option<Arc<dyn OverrideStore>>>,
}

impl Default for Overrides {
    fn default() -> Self {
        Overrides {
            cells: Mutex::new(HashMap::new()),
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

    /// Keeps the overrides in `store` from now on (a reload may move the
    /// state directory).
    pub fn set_store(&self, store: Arc<dyn OverrideStore>) {
        *locked(&self.store) = Some(store);
    }

    /// Takes back what the store kept (at start-up).
    pub fn restore(&self) -> Result<usize, StoreError> {
        let Some(store) = locked(&self.store).clone() else {
            return Ok(0);
        };
        let saved = store.load()?;
        for (target, state) in &saved {
            state.store(&self.cell(target));
        }
        Ok(saved.len())
    }

    /// Sets `target` to `state` at once, then saves every override. The
    /// override acts even when saving fails (the error says it will not
    /// survive a restart). Blocking: call it off the async workers.
    pub fn set(&self, target: &Target, state: Override) -> Result<(), StoreError> {
        // One writer at a time, so files are saved in the order of changes.
        let store = locked(&self.store);
        state.store(&self.cell(target));
        match store.as_ref() {
            Some(store) => store.save(&self.current()),
            None => Ok(()),
        }
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
        let saved = vec![
            (
                Target::Datacenter {
                    name: "eu-west".into(),
                },
                Override::Down,
            ),
            (backend("10.0.0.5:8080", None), Override::Drain),
            (backend("10.0.0.5:8080", Some("api")), Override::Down),
        ];
        store.save(&saved).unwrap();
        assert_eq!(store.load().unwrap(), saved);
        store.save(&saved[..1]).unwrap();
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
        overrides.set(&dc, Override::Auto).unwrap();
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
