//! A config kept in etcd (`[cluster] config = "etcd"`): the document
//! pushed to `PREFIX config/current`, with the node's own sections taken
//! from its local file.
//!
//! The split is by top-level section. The node's own are what it needs
//! before it can reach etcd, or what belongs to its host: `[cluster]`
//! (how to reach etcd), `[runtime]` (state directory, threads), `[admin]`
//! (its admin API) and `[log]`. Everything else (listeners, pools, data
//! centers, DNS, GeoIP) is the document's. Each side holding the other's
//! sections is an error rather than a silent precedence rule.
//!
//! The two texts are joined (document first, then the local file) and
//! read as one, so that references across them (`[cluster] datacenter`)
//! are checked as in a single file; each error's line is then given back
//! in the text it came from.

use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::error::{ConfigError, ConfigErrors};
use super::model::{ClusterConfig, Config, RuntimeConfig};
use super::parse::parse_str;
use super::walk::{Ctx, Field, Lines, syntax_error};

/// The top-level sections a node keeps in its local file.
pub const NODE_SECTIONS: [&str; 4] = ["cluster", "runtime", "admin", "log"];

/// What a node's local file says before the rest of its config is read.
#[derive(Debug, Clone)]
pub struct LocalNode {
    /// `[cluster]`, None without one.
    pub cluster: Option<ClusterConfig>,
    /// `[runtime]`: where the copy of the last config in force is kept.
    pub runtime: RuntimeConfig,
}

/// A local file's `[cluster]` and `[runtime]`, read before anything else
/// is: they say whether the rest comes from etcd, and where the last copy
/// is. `datacenter` is not checked against the data centers here (in
/// etcd mode they are the document's; the whole config checks it).
pub fn local_cluster(path: &Path) -> Result<LocalNode, ConfigErrors> {
    let source = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(&source)
        .map_err(|e| ConfigError::at("", format_args!("cannot read {}: {e}", source.display())))?;
    let lines = Lines::new(&text);
    let root = DeTable::parse(&text).map_err(|e| syntax_error(&e, &text, &lines))?;
    let mut ctx = Ctx::new(lines, base_of(&source));
    let field = |key: &str| {
        root.get_ref().get(key).map(|value| Field {
            path: key.to_owned(),
            value,
        })
    };
    let cluster = field("cluster").and_then(|f| ctx.cluster(&f, None));
    let runtime = field("runtime").and_then(|f| ctx.runtime(&f));
    let errors = ctx.into_errors();
    if errors.is_empty() {
        Ok(LocalNode {
            cluster,
            runtime: runtime.unwrap_or_default(),
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

fn base_of(source: &Path) -> PathBuf {
    source.parent().unwrap_or(Path::new("")).to_path_buf()
}

/// A document joined with a node's local file, ready to be read as one.
#[derive(Debug, Clone)]
pub struct Merged {
    pub text: String,
    /// Lines of `text` that are the document's; the local file's follow.
    document_lines: usize,
    /// Relative paths resolve against its directory; errors past the
    /// document name it.
    source: PathBuf,
    local: bool,
}

impl Merged {
    /// `document` joined with `local` (the local file's text and path).
    /// Without `local` (`geolb config push --etcd`), the document alone,
    /// its relative paths resolved against `document_path`'s directory.
    pub fn new(
        document: &str,
        document_path: &Path,
        local: Option<(&str, &Path)>,
    ) -> Result<Merged, ConfigErrors> {
        let mut errors = sections(document, false);
        let mut text = document.to_owned();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        let document_lines = text.matches('\n').count();
        let source = match local {
            Some((local_text, path)) => {
                let named = |mut e: ConfigError| {
                    e.message = format!("{} (in {})", e.message, path.display());
                    e
                };
                errors.extend(sections(local_text, true).into_iter().map(named));
                text.push_str(local_text);
                path
            }
            None => document_path,
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Merged {
            text,
            document_lines,
            source: std::path::absolute(source).unwrap_or_else(|_| source.to_path_buf()),
            local: local.is_some(),
        })
    }

    /// Reads the joined text as one config; every error placed in its own
    /// text.
    pub fn parse(&self) -> Result<Config, ConfigErrors> {
        let mut config = parse_str(&self.text, &self.source).map_err(|e| self.place(e))?;
        config.text = Some(self.text.as_str().into());
        Ok(config)
    }

    /// Gives each error past the document its line in the local file.
    pub fn place(&self, ConfigErrors(errors): ConfigErrors) -> ConfigErrors {
        ConfigErrors(errors.into_iter().map(|e| self.place_one(e)).collect())
    }

    pub fn place_one(&self, mut e: ConfigError) -> ConfigError {
        if self.local
            && let Some(line) = e.line
            && line > self.document_lines
        {
            e.line = Some(line - self.document_lines);
            e.message = format!("{} (in {})", e.message, self.source.display());
        }
        e
    }
}

/// What is wrong with the top level of a document (`local` false) or of a
/// node's local file: sections on the wrong side, and, in the local file,
/// keys before its first table header (joined after the document, they
/// would land in the document's last table).
fn sections(text: &str, local: bool) -> Vec<ConfigError> {
    let lines = Lines::new(text);
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => return vec![syntax_error(&e, text, &lines)],
    };
    let mut errors = Vec::new();
    for (key, _) in root.get_ref().iter() {
        let name: &str = key.get_ref();
        let node = NODE_SECTIONS.contains(&name);
        let message = match (local, node) {
            (false, true) => {
                "is each node's own: it stays in every node's local file (with \
                 [cluster] config = \"etcd\"); remove it from the document"
            }
            (true, false) => {
                "comes from etcd with [cluster] config = \"etcd\": put it in the \
                 document (`geolb config push`) and remove it here"
            }
            _ => continue,
        };
        errors.push(ConfigError {
            path: name.to_owned(),
            message: message.to_owned(),
            line: Some(lines.line(key.span().start)),
        });
    }
    if local {
        let first = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i, l.trim()))
            .find(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        if let Some((i, l)) = first
            && !l.starts_with('[')
        {
            errors.push(ConfigError {
                path: String::new(),
                message: format!(
                    "{l:?} comes before any table header: with the config in etcd this \
                     file holds tables only ({})",
                    NODE_SECTIONS.map(|s| format!("[{s}]")).join(", ")
                ),
                line: Some(i + 1),
            });
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode = \"a\"\n\
                         datacenter = \"eu\"\nconfig = \"etcd\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    const DOCUMENT: &str = "[[datacenter]]\nname = \"eu\"\nlocation = { lat = 0, lon = 0 }\n\
                            addresses = [\"192.0.2.1\"]\n";

    fn merged(document: &str, local: &str) -> Result<Config, ConfigErrors> {
        Merged::new(
            document,
            Path::new("/d/doc.toml"),
            Some((local, Path::new("/etc/geolb/node.toml"))),
        )?
        .parse()
    }

    #[test]
    fn the_node_sections_come_from_the_local_file_and_the_rest_from_the_document() {
        let config = merged(DOCUMENT, LOCAL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.datacenters[0].name, "eu");
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.datacenter.as_deref(), Some("eu"));
        assert_eq!(cluster.config, super::super::ConfigFrom::Etcd);
        assert_eq!(config.source, Path::new("/etc/geolb/node.toml"));
        // No trailing newline in the document: the local file still
        // starts on a line of its own.
        let trimmed = DOCUMENT.trim_end();
        assert!(merged(trimmed, LOCAL).is_ok());
    }

    #[test]
    fn each_error_is_placed_in_its_own_text() {
        // Document line 2 and local file line 4 (a data center the
        // document does not have).
        let bad_document = "[[datacenter]]\nname = \"eu\"\nlocation = { lat = 0, lon = 0 }\n\
                            addresses = [\"192.0.2.1\"]\nweight = \"heavy\"\n";
        let local = LOCAL.replace("datacenter = \"eu\"", "datacenter = \"us\"");
        let errors = merged(bad_document, &local).unwrap_err().0;
        let at = |path: &str| errors.iter().find(|e| e.path == path).unwrap();
        assert_eq!(at("datacenter[0].weight").line, Some(5), "{errors:?}");
        let dc = at("cluster.datacenter");
        assert_eq!(dc.line, Some(4), "{dc}");
        assert!(dc.message.ends_with("(in /etc/geolb/node.toml)"), "{dc}");
    }

    #[test]
    fn sections_on_the_wrong_side_are_refused() {
        let errors = merged(&format!("[log]\nformat = \"json\"\n{DOCUMENT}"), LOCAL)
            .unwrap_err()
            .0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].path.as_str(), errors[0].line), ("log", Some(1)));
        let errors = merged(DOCUMENT, &format!("{LOCAL}[[pool]]\nname = \"p\"\n"))
            .unwrap_err()
            .0;
        assert_eq!((errors[0].path.as_str(), errors[0].line), ("pool", Some(8)));
        // A key before the first header would join the document's last table.
        let errors = merged(DOCUMENT, &format!("# node\nlog.format = \"json\"\n{LOCAL}"))
            .unwrap_err()
            .0;
        assert!(
            errors
                .iter()
                .any(|e| e.line == Some(2) && e.message.contains("table header")),
            "{errors:?}"
        );
    }

    #[test]
    fn the_local_cluster_is_read_without_the_data_centers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, LOCAL).unwrap();
        let node = local_cluster(&path).unwrap();
        assert_eq!(node.cluster.unwrap().datacenter.as_deref(), Some("eu"));
        assert_eq!(node.runtime, RuntimeConfig::default());
        std::fs::write(&path, LOCAL.replace("\"etcd\"", "\"consul\"")).unwrap();
        let errors = local_cluster(&path).unwrap_err().0;
        assert_eq!(errors[0].path, "cluster.config");
        std::fs::write(&path, "[admin]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        assert!(local_cluster(&path).unwrap().cluster.is_none());
    }
}
