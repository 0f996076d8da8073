//! `geolb config push`, `history` and `rollback`: the config document in
//! etcd (see [`crate::distribution`]), validated here as `geolb check`
//! would before anything is written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{self, ClusterConfig, ConfigFrom};
use crate::distribution::{ConfigStore, Document, PushOutcome, Pushed};
use crate::reload;

/// Which etcd, and how documents are checked before they are written.
pub enum Target {
    /// A node's local file: its `[cluster]` says how to reach etcd (TLS,
    /// authentication included), and documents are checked joined with
    /// it, as that node will read them.
    Node(PathBuf),
    /// Endpoints and a prefix, plain: documents are checked alone.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

impl Target {
    fn store(&self) -> Result<ConfigStore, String> {
        let cluster = match self {
            Target::Node(path) => config::local_cluster(path)
                .map_err(|e| format!("{}: invalid:\n{e}", path.display()))?
                .cluster
                .ok_or_else(|| format!("{}: has no [cluster] section", path.display()))?,
            Target::Etcd { endpoints, prefix } => plain(endpoints, prefix)?,
        };
        Ok(ConfigStore::new(cluster))
    }

    /// `text` checked as the node (or a config alone) would read it.
    fn check(&self, text: &str, shown: &Path) -> Result<String, String> {
        let local = match self {
            Target::Node(path) => Some(path.as_path()),
            Target::Etcd { .. } => None,
        };
        match reload::check_document(text, shown, local, None) {
            Ok(checked) => {
                let mut said = format!("{}: {}", shown.display(), checked.summary());
                for warning in &checked.warnings {
                    said.push_str(&format!("\n{}: warning: {warning}", shown.display()));
                }
                Ok(said)
            }
            Err(errors) => Err(format!(
                "{}: invalid, {} error(s), nothing written:\n{errors}",
                shown.display(),
                errors.0.len()
            )),
        }
    }
}

/// `--etcd URLS --prefix P`: no TLS or authentication (a node's file
/// gives those: `--config`).
fn plain(endpoints: &[String], prefix: &str) -> Result<ClusterConfig, String> {
    if endpoints.is_empty() {
        return Err("give --config NODE.toml or --etcd URLS".to_owned());
    }
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(format!(
            "--prefix {prefix:?}: expected a key prefix starting and ending with '/', like \"/geolb/\""
        ));
    }
    if let Some(url) = endpoints.iter().find(|u| !u.starts_with("http://")) {
        return Err(format!(
            "--etcd {url}: plain http:// only here; for https and authentication give a node's file with --config"
        ));
    }
    Ok(ClusterConfig {
        etcd: endpoints.to_vec(),
        prefix: prefix.to_owned(),
        node: "cli".to_owned(),
        datacenter: None,
        ca: None,
        cert: None,
        key: None,
        user: None,
        password_file: None,
        dial_timeout: config::DEFAULT_DIAL_TIMEOUT,
        lease: Duration::from_secs(10),
        config: ConfigFrom::Etcd,
    })
}

/// Who pushes: `USER@HOST` unless given.
pub fn default_by() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

/// `geolb config push FILE`: checked, then written as a new revision.
pub async fn push(target: &Target, file: &Path, by: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let checked = target.check(&text, file)?;
    let store = target.store()?;
    let outcome = store.push(&text, by).await?;
    Ok(format!("{checked}\n{}", written(&store, outcome, &text)))
}

fn written(store: &ConfigStore, outcome: PushOutcome, text: &str) -> String {
    let document = Document::new(0, text);
    match outcome {
        PushOutcome::Written(revision) => format!(
            "written to {} at revision {revision} (sha256 {}, {} bytes)",
            store.current_key(),
            document.sha256,
            text.len()
        ),
        PushOutcome::Unchanged(revision) => format!(
            "unchanged: {} holds this text since revision {revision}; nothing written",
            store.current_key()
        ),
    }
}

/// `geolb config history`: one line per push kept, oldest first.
pub async fn history(target: &Target) -> Result<String, String> {
    let store = target.store()?;
    let pushes = store.history().await?;
    let current = store.current().await?.map_or(0, |d| d.revision);
    Ok(table(&pushes, current))
}

fn table(pushes: &[Pushed], current: i64) -> String {
    let mut out = format!(
        "{:>10}  {:<27}  {:<24}  {:<64}  {:>8}\n",
        "REVISION", "AT", "BY", "SHA256", "SIZE"
    );
    for p in pushes {
        let mark = if p.revision == current {
            "  current"
        } else {
            ""
        };
        out.push_str(&format!(
            "{:>10}  {:<27}  {:<24}  {:<64}  {:>8}{mark}\n",
            p.revision, p.at, p.by, p.sha256, p.size
        ));
    }
    if pushes.is_empty() {
        out.push_str("(nothing pushed yet)\n");
    }
    out.truncate(out.trim_end().len());
    out
}

/// `geolb config rollback REV`: that push's text, checked again (the
/// nodes or their files may have changed since), written as a new
/// revision.
pub async fn rollback(target: &Target, revision: i64, by: &str) -> Result<String, String> {
    let store = target.store()?;
    let pushes = store.history().await?;
    let Some(old) = pushes.iter().find(|p| p.revision == revision) else {
        let kept = match (pushes.first(), pushes.last()) {
            (Some(first), Some(last)) => format!(
                "revisions {} to {} are kept (the last {})",
                first.revision,
                last.revision,
                crate::distribution::HISTORY_KEPT
            ),
            _ => "nothing is kept yet".to_owned(),
        };
        return Err(format!(
            "no push at revision {revision} in the history: {kept}; `geolb config history` lists them"
        ));
    };
    let shown = PathBuf::from(format!("{}@{revision}", store.current_key()));
    let checked = target.check(&old.text, &shown)?;
    let by = format!("{by} (rollback to {revision})");
    let outcome = store.push(&old.text, &by).await?;
    Ok(format!(
        "{checked}\n{}",
        written(&store, outcome, &old.text)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_table_marks_the_current_push() {
        let push = |revision, by: &str| Pushed {
            revision,
            at: "2026-12-01T05:00:00Z".into(),
            by: by.into(),
            sha256: "0".repeat(64),
            size: 10,
            text: String::new(),
        };
        let table = table(&[push(5, "a@h"), push(9, "b@h")], 9);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[1].trim_start().starts_with("5 ") && !lines[1].ends_with("current"));
        assert!(lines[2].ends_with("current"), "{table}");
    }

    #[test]
    fn plain_targets_are_checked_before_any_connection() {
        assert!(plain(&[], "/geolb/").is_err());
        assert!(plain(&["http://127.0.0.1:2379".into()], "geolb").is_err());
        assert!(plain(&["https://127.0.0.1:2379".into()], "/geolb/").is_err());
        let c = plain(&["http://127.0.0.1:2379".into()], "/x/").unwrap();
        assert_eq!(c.prefix, "/x/");
    }
}
