//! The config kept in etcd (`[cluster] config = "etcd"`): pushed with
//! `geolb config push`, watched by every node, the last one that came
//! into service kept in the state directory.
//!
//! Keys, under `[cluster] prefix`:
//!
//! - `config/current`: the document (TOML text, as pushed). Its etcd
//!   `mod_revision` is the config's revision everywhere (history,
//!   rollback, `/status`).
//! - `config/history/N` (N the push's number, zero-padded): JSON
//!   `{"at", "by", "sha256", "size", "text"}`, written in the same
//!   transaction as `config/current`, so its `mod_revision` is that
//!   push's revision. The last [`HISTORY_KEPT`] are kept: etcd's own
//!   history goes at its next compaction, so rollback reads these.
//!
//! A push is a transaction conditional on `config/current`'s version, so
//! two pushes at once cannot both claim one history number; the loser
//! reads again and retries.
//!
//! This module moves text only; whether a document is a valid config is
//! `reload`'s to say, on the pushing side and on each node.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cluster::{connect_options, timed};
use crate::config::ClusterConfig;
use crate::locked;
use crate::metrics::CONFIG_ETCD_REVISION;
use crate::overrides::replace_file;

/// Pushes whose text stays in `config/history/`.
pub const HISTORY_KEPT: usize = 20;
/// The largest document taken: a push writes it twice (current and
/// history) in one request, and etcd refuses requests over 1.5 MiB by
/// default (`--max-request-bytes`).
pub const MAX_DOCUMENT: usize = 512 * 1024;
/// How many times a push retries after another push landed between its
/// read and its write.
const PUSH_ATTEMPTS: usize = 3;
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One version of the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// The etcd revision that wrote it (0: never in etcd).
    pub revision: i64,
    pub sha256: String,
    pub text: String,
}

impl Document {
    pub fn new(revision: i64, text: &str) -> Document {
        Document {
            revision,
            sha256: sha256(text),
            text: text.to_owned(),
        }
    }
}

pub fn sha256(text: &str) -> String {
    data_encoding::HEXLOWER
        .encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

/// One push, as `geolb config history` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pushed {
    /// From the key's `mod_revision`, not stored in the value.
    #[serde(skip)]
    pub revision: i64,
    /// RFC 3339, UTC.
    pub at: String,
    pub by: String,
    pub sha256: String,
    pub size: usize,
    pub text: String,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Written at this revision.
    Written(i64),
    /// `config/current` holds this text already, since this revision:
    /// nothing written, no node reloads.
    Unchanged(i64),
}

/// The document's keys in one etcd cluster.
pub struct ConfigStore {
    config: ClusterConfig,
}

impl ConfigStore {
    pub fn new(config: ClusterConfig) -> ConfigStore {
        ConfigStore { config }
    }

    pub fn current_key(&self) -> String {
        format!("{}config/current", self.config.prefix)
    }

    fn history_prefix(&self) -> String {
        format!("{}config/history/", self.config.prefix)
    }

    fn endpoints(&self) -> &[String] {
        &self.config.etcd
    }

    /// A client of endpoint `at`.
    async fn client_at(&self, at: usize) -> Result<Client, String> {
        let url = &self.config.etcd[at];
        let options = connect_options(&self.config)?;
        timed(
            self.config.dial_timeout,
            Client::connect([url], Some(options)),
        )
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))
    }

    /// Runs `request` on each endpoint in turn until one answers.
    async fn on_any<T>(
        &self,
        request: impl AsyncFn(Client) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut errors = Vec::new();
        for at in 0..self.endpoints().len() {
            let done = match self.client_at(at).await {
                Ok(client) => request(client).await,
                Err(e) => Err(e),
            };
            match done {
                Ok(answer) => return Ok(answer),
                Err(e) => errors.push(format!("{}: {e}", self.config.etcd[at])),
            }
        }
        Err(errors.join("; "))
    }

    /// The document in force in etcd (None: nothing pushed yet).
    pub async fn current(&self) -> Result<Option<Document>, String> {
        self.on_any(async |mut client| {
            let (document, _) = self.read_current(&mut client).await?;
            Ok(document)
        })
        .await
    }

    /// The document, and the revision etcd was at when read.
    async fn read_current(&self, client: &mut Client) -> Result<(Option<Document>, i64), String> {
        let got = timed(
            self.config.dial_timeout,
            client.get(self.current_key(), None),
        )
        .await
        .map_err(|e| format!("reading {}: {e}", self.current_key()))?;
        let at = got.header().map_or(0, |h| h.revision());
        let Some(kv) = got.kvs().first() else {
            return Ok((None, at));
        };
        let text = std::str::from_utf8(kv.value())
            .map_err(|_| format!("{} is not UTF-8 text", self.current_key()))?;
        Ok((Some(Document::new(kv.mod_revision(), text)), at))
    }

    /// Writes `text` as the new document, by `by`; the caller validated
    /// it. Bounded to [`MAX_DOCUMENT`].
    pub async fn push(&self, text: &str, by: &str) -> Result<PushOutcome, String> {
        if text.len() > MAX_DOCUMENT {
            return Err(format!(
                "the document is {} bytes; at most {MAX_DOCUMENT} are taken (etcd's request limit)",
                text.len()
            ));
        }
        self.on_any(async |mut client| {
            for _ in 0..PUSH_ATTEMPTS {
                if let Some(done) = self.try_push(&mut client, text, by).await? {
                    self.trim_history(&mut client).await;
                    return Ok(done);
                }
            }
            Err(format!(
                "other pushes kept landing between reading and writing {} ({PUSH_ATTEMPTS} tries): try again",
                self.current_key()
            ))
        })
        .await
    }

    /// One read-then-conditional-write; None when another push landed in
    /// between.
    async fn try_push(
        &self,
        client: &mut Client,
        text: &str,
        by: &str,
    ) -> Result<Option<PushOutcome>, String> {
        let dial = self.config.dial_timeout;
        let key = self.current_key();
        let got = timed(dial, client.get(key.clone(), None))
            .await
            .map_err(|e| format!("reading {key}: {e}"))?;
        let (version, current) = got
            .kvs()
            .first()
            .map_or((0, None), |kv| (kv.version(), Some(kv)));
        if let Some(kv) = current
            && kv.value() == text.as_bytes()
        {
            return Ok(Some(PushOutcome::Unchanged(kv.mod_revision())));
        }
        let entry = Pushed {
            revision: 0,
            at: crate::logging::rfc3339_utc(std::time::SystemTime::now()),
            by: by.to_owned(),
            sha256: sha256(text),
            size: text.len(),
            text: text.to_owned(),
        };
        let entry = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
        // The push's number: the version `config/current` gets with it.
        let history = format!("{}{:012}", self.history_prefix(), version + 1);
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, version)])
            .and_then([
                TxnOp::put(key.clone(), text, None),
                TxnOp::put(history, entry, None),
            ]);
        let done = timed(dial, client.txn(txn))
            .await
            .map_err(|e| format!("writing {key}: {e}"))?;
        if !done.succeeded() {
            return Ok(None);
        }
        let revision = done.header().map_or(0, |h| h.revision());
        Ok(Some(PushOutcome::Written(revision)))
    }

    /// Deletes history entries past the last [`HISTORY_KEPT`]; best
    /// effort (the push is done): a failure is only logged.
    async fn trim_history(&self, client: &mut Client) {
        let dial = self.config.dial_timeout;
        let prefix = self.history_prefix();
        let keys = GetOptions::new().with_prefix().with_keys_only();
        let trimmed = async {
            let all = timed(dial, client.get(prefix.clone(), Some(keys))).await?;
            let kvs = all.kvs();
            if kvs.len() <= HISTORY_KEPT {
                return Ok(());
            }
            // Keys sort by push number (zero-padded): delete [first, the
            // first one kept).
            let first = kvs[0].key().to_vec();
            let kept = kvs[kvs.len() - HISTORY_KEPT].key().to_vec();
            let range = DeleteOptions::new().with_range(kept);
            timed(dial, client.delete(first, Some(range)))
                .await
                .map(drop)
        };
        if let Err(e) = trimmed.await {
            tracing::warn!(error = %e, %prefix, "cannot trim the config history");
        }
    }

    /// Every push kept, oldest first.
    pub async fn history(&self) -> Result<Vec<Pushed>, String> {
        self.on_any(async |mut client| {
            let prefix = self.history_prefix();
            let all = timed(
                self.config.dial_timeout,
                client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await
            .map_err(|e| format!("reading {prefix}: {e}"))?;
            let mut pushes = Vec::new();
            for kv in all.kvs() {
                match serde_json::from_slice::<Pushed>(kv.value()) {
                    Ok(mut pushed) => {
                        pushed.revision = kv.mod_revision();
                        pushes.push(pushed);
                    }
                    Err(e) => tracing::warn!(
                        key = %String::from_utf8_lossy(kv.key()),
                        error = %e,
                        "a config history entry that cannot be read; skipped"
                    ),
                }
            }
            Ok(pushes)
        })
        .await
    }

    /// Sends every new version of the document into `latest` until
    /// shutdown, reconnecting with backoff, moving to the next endpoint
    /// on each failure.
    pub async fn watch(
        &self,
        latest: tokio::sync::watch::Sender<Option<Document>>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = MIN_BACKOFF;
        let mut at = 0;
        loop {
            let began = Instant::now();
            let ended = tokio::select! {
                ended = self.watch_session(at, &latest) => ended,
                _ = shutdown.cancelled() => return,
            };
            at = (at + 1) % self.endpoints().len();
            if began.elapsed() > MAX_BACKOFF {
                backoff = MIN_BACKOFF;
            }
            tracing::warn!(error = %ended, retry_in = ?backoff, "config watch: lost etcd, serving the config in force");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection: the document read whole, then watched from the
    /// revision after that read. Returns why it ended.
    async fn watch_session(
        &self,
        at: usize,
        latest: &tokio::sync::watch::Sender<Option<Document>>,
    ) -> String {
        let dial = self.config.dial_timeout;
        let mut client = match self.client_at(at).await {
            Ok(client) => client,
            Err(e) => return e,
        };
        let from = match self.read_current(&mut client).await {
            Ok((document, revision)) => {
                if let Some(document) = document {
                    offer(latest, document);
                }
                revision + 1
            }
            Err(e) => return e,
        };
        let key = self.current_key();
        let options = WatchOptions::new()
            .with_start_revision(from)
            .with_progress_notify();
        let mut stream = match timed(dial, client.watch(key.clone(), Some(options))).await {
            Ok(stream) => stream,
            Err(e) => return format!("watching {key}: {e}"),
        };
        // As the overrides' watch: progress requests prove it alive.
        let mut ticker = tokio::time::interval(dial);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(response)) => response,
                        Ok(None) => return "the config watch ended".to_owned(),
                        Err(e) => return format!("watching {key}: {e}"),
                    };
                    heard = Instant::now();
                    if response.canceled() {
                        return format!("etcd cancelled the config watch: {}", response.cancel_reason());
                    }
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        if event.event_type() == EventType::Delete {
                            tracing::error!(%key, "the config document was deleted from etcd: serving the one in force");
                            continue;
                        }
                        match std::str::from_utf8(kv.value()) {
                            Ok(text) => offer(latest, Document::new(kv.mod_revision(), text)),
                            Err(_) => tracing::error!(%key, revision = kv.mod_revision(), "the config document is not UTF-8 text: refused"),
                        }
                    }
                }
                _ = ticker.tick() => {
                    if heard.elapsed() > dial * 2 {
                        return format!("etcd did not answer for {:?}", heard.elapsed());
                    }
                    if let Err(e) = stream.request_progress().await {
                        return format!("watching {key}: {e}");
                    }
                }
            }
        }
    }
}

/// Hands `document` on unless it is the version already there (a
/// reconnect reads the document again).
fn offer(latest: &tokio::sync::watch::Sender<Option<Document>>, document: Document) {
    latest.send_if_modified(|held| {
        if held
            .as_ref()
            .is_some_and(|d| d.revision == document.revision)
        {
            return false;
        }
        *held = Some(document);
        true
    });
}

/// A config refused on this node, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    pub revision: i64,
    pub sha256: String,
    pub at: String,
    pub errors: Vec<String>,
}

/// A node whose config comes from etcd: the document in force, the
/// newest seen, the last refused; the copy kept in the state directory.
pub struct EtcdConfig {
    pub store: ConfigStore,
    /// The local file: the node's own sections.
    pub local: PathBuf,
    /// `state_dir/etcd-config.json`.
    saved: PathBuf,
    in_force: Mutex<Option<Document>>,
    latest: Mutex<Option<Document>>,
    refused: Mutex<Option<Refused>>,
}

/// What `/status` says of where the config came from.
#[derive(Serialize)]
pub struct ConfigSourceStatus {
    pub source: &'static str,
    pub key: String,
    pub local_file: String,
    /// The revision serving (0: none yet).
    pub revision: i64,
    pub sha256: Option<String>,
    /// The newest revision seen in etcd (a refused one included).
    pub latest_revision: i64,
    pub refused: Option<Refused>,
    pub saved_copy: String,
}

impl EtcdConfig {
    pub fn new(store: ConfigStore, local: PathBuf, state_dir: &Path) -> EtcdConfig {
        EtcdConfig {
            store,
            local,
            saved: state_dir.join("etcd-config.json"),
            in_force: Mutex::new(None),
            latest: Mutex::new(None),
            refused: Mutex::new(None),
        }
    }

    /// The copy last brought into service here (None: never, or it
    /// cannot be read, which is logged).
    pub fn load_saved(&self) -> Option<Document> {
        let bytes = match std::fs::read(&self.saved) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::error!(path = %self.saved.display(), error = %e, "cannot read the saved config");
                return None;
            }
        };
        match serde_json::from_slice::<Document>(&bytes) {
            Ok(document) if document.sha256 == sha256(&document.text) => Some(document),
            Ok(_) => {
                tracing::error!(path = %self.saved.display(), "the saved config does not match its sha256: not used");
                None
            }
            Err(e) => {
                tracing::error!(path = %self.saved.display(), error = %e, "cannot read the saved config");
                None
            }
        }
    }

    /// The document to read now: the newest seen, else the one in force.
    pub fn wanted(&self) -> Option<Document> {
        locked(&self.latest)
            .clone()
            .or_else(|| locked(&self.in_force).clone())
    }

    pub fn saw(&self, document: Document) {
        *locked(&self.latest) = Some(document);
    }

    pub fn in_force(&self) -> Option<Document> {
        locked(&self.in_force).clone()
    }

    /// Whether `revision` was refused last (not worth trying again
    /// unasked).
    pub fn was_refused(&self, revision: i64) -> bool {
        locked(&self.refused)
            .as_ref()
            .is_some_and(|r| r.revision == revision)
    }

    /// `document` serves now: kept for a start while etcd is out of reach.
    pub fn served(&self, document: Document) {
        ::metrics::gauge!(CONFIG_ETCD_REVISION).set(document.revision as f64);
        let mut refused = locked(&self.refused);
        if refused
            .as_ref()
            .is_some_and(|r| r.revision <= document.revision)
        {
            *refused = None;
        }
        drop(refused);
        let saved = serde_json::to_vec_pretty(&document)
            .map_err(std::io::Error::other)
            .and_then(|bytes| replace_file(&self.saved, &bytes));
        if let Err(e) = saved {
            tracing::error!(path = %self.saved.display(), error = %e, "cannot keep the config in force: a start while etcd is out of reach would lack it");
        }
        *locked(&self.in_force) = Some(document);
    }

    pub fn refused(&self, document: &Document, errors: Vec<String>) {
        *locked(&self.refused) = Some(Refused {
            revision: document.revision,
            sha256: document.sha256.clone(),
            at: crate::logging::rfc3339_utc(std::time::SystemTime::now()),
            errors,
        });
    }

    pub fn status(&self) -> ConfigSourceStatus {
        let in_force = self.in_force();
        ConfigSourceStatus {
            source: "etcd",
            key: self.store.current_key(),
            local_file: self.local.display().to_string(),
            revision: in_force.as_ref().map_or(0, |d| d.revision),
            sha256: in_force.map(|d| d.sha256),
            latest_revision: self.wanted().map_or(0, |d| d.revision),
            refused: locked(&self.refused).clone(),
            saved_copy: self.saved.display().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_saved_copy_comes_back_only_when_intact() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::ClusterConfig {
            etcd: vec!["http://127.0.0.1:1".into()],
            prefix: "/geolb/".into(),
            node: "a".into(),
            datacenter: None,
            ca: None,
            cert: None,
            key: None,
            user: None,
            password_file: None,
            dial_timeout: Duration::from_millis(100),
            lease: Duration::from_secs(2),
            config: crate::config::ConfigFrom::Etcd,
        };
        let node = EtcdConfig::new(
            ConfigStore::new(config.clone()),
            "/n.toml".into(),
            dir.path(),
        );
        assert_eq!(node.load_saved(), None);
        let document = Document::new(7, "[[pool]]\n");
        node.served(document.clone());
        let again = EtcdConfig::new(ConfigStore::new(config), "/n.toml".into(), dir.path());
        assert_eq!(again.load_saved(), Some(document));
        let path = dir.path().join("etcd-config.json");
        let tampered = std::fs::read_to_string(&path)
            .unwrap()
            .replace("pool", "tool");
        std::fs::write(&path, tampered).unwrap();
        assert_eq!(again.load_saved(), None, "a text that is not the one kept");
    }

    #[test]
    fn a_reconnect_offers_the_same_revision_once() {
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        offer(&tx, Document::new(3, "a"));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        offer(&tx, Document::new(3, "a"));
        assert!(!rx.has_changed().unwrap());
        offer(&tx, Document::new(4, "b"));
        assert!(rx.has_changed().unwrap());
    }
}
