//! TOML text -> validated [`Config`]: reading a file, the root table and
//! its small sections (`[runtime]`, `[admin]`), and opening the files a
//! valid config names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::error::{ConfigError, ConfigErrors};
use super::model::*;
use super::values::{file_mode, ident, unix_socket_path};
use super::walk::{Ctx, Field, Lines, Tbl, first_seen, locate, quote, syntax_error};

/// Reads and validates the file at `path`; `Config::source` is made absolute.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(&source).map_err(|e| ConfigError {
        path: String::new(),
        message: format!("cannot read {}: {e}", source.display()),
        line: None,
    })?;
    parse_str(&text, &source)
}

/// Validates `text`; relative paths in it are resolved against `source`'s
/// directory. No file is opened (see [`check_files`]).
pub fn parse_str(text: &str, source: &Path) -> Result<Config, ConfigErrors> {
    let (config, ctx) = read_document(text, source)?;
    let errors = ctx.into_errors();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The whole walk, with what it found along the way. The config is only
/// valid when `errors` is empty.
pub(super) fn read_document(text: &str, source: &Path) -> Result<(Config, Ctx), ConfigError> {
    let lines = Lines::new(text);
    let root = DeTable::parse(text).map_err(|e| syntax_error(&e, text, &lines))?;
    let base = source.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut ctx = Ctx::new(lines, base);
    let config = ctx.config(root.get_ref(), source);
    Ok((config, ctx))
}

/// Opens every file `config` names (GeoIP database, zone files, TLS
/// certificates and keys) and reports each one that cannot be opened.
pub fn check_files(config: &Config) -> Vec<ConfigError> {
    let mut files: Vec<(String, &Path)> = Vec::new();
    if let Some(admin) = &config.admin {
        if let Some(token) = admin.token_file.as_deref() {
            files.push(("admin.token_file".to_owned(), token));
        }
        for (j, tls) in admin.tls.iter().enumerate() {
            files.push((format!("admin.tls[{j}].cert"), &tls.cert));
            files.push((format!("admin.tls[{j}].key"), &tls.key));
        }
    }
    if let Some(cluster) = &config.cluster {
        let named = [
            ("ca", &cluster.ca),
            ("cert", &cluster.cert),
            ("key", &cluster.key),
            ("password_file", &cluster.password_file),
        ];
        for (key, file) in named {
            if let Some(file) = file {
                files.push((format!("cluster.{key}"), file));
            }
        }
    }
    if let Some(db) = config.geoip.as_ref().and_then(|g| g.database.as_deref()) {
        files.push(("geoip.database".to_owned(), db));
    }
    if let Some(dns) = &config.dns {
        for (i, zone) in dns.zones.iter().enumerate() {
            if let Some(file) = &zone.file {
                files.push((format!("dns.zone[{i}].file"), file));
            }
        }
        for (i, key) in dns.tsig.iter().enumerate() {
            if let TsigSecret::File(file) = &key.secret {
                files.push((format!("dns.tsig[{i}].secret_file"), file));
            }
        }
    }
    for (i, listener) in config.listeners.iter().enumerate() {
        for (j, tls) in listener.tls.iter().enumerate() {
            files.push((format!("listener[{i}].tls[{j}].cert"), &tls.cert));
            files.push((format!("listener[{i}].tls[{j}].key"), &tls.key));
        }
        if let Some(auth) = &listener.client_auth {
            files.push((format!("listener[{i}].client_auth.ca"), &auth.ca));
        }
    }
    let ca_of = |check: &'_ CheckConfig| match &check.probe {
        Probe::Http(h) => h.ca.clone(),
        Probe::Tcp => None,
    };
    let mut cas: Vec<(String, PathBuf)> = Vec::new();
    for (i, pool) in config.pools.iter().enumerate() {
        if let Some(ca) = pool.check.as_ref().and_then(ca_of) {
            cas.push((format!("pool[{i}].check.ca"), ca));
        }
        if let Some(ca) = pool.tls.as_ref().and_then(|t| t.ca.clone()) {
            cas.push((format!("pool[{i}].tls.ca"), ca));
        }
    }
    for (i, dc) in config.datacenters.iter().enumerate() {
        if let Some(ca) = dc.check.as_ref().and_then(|r| ca_of(&r.check)) {
            cas.push((format!("datacenter[{i}].check.ca"), ca));
        }
    }
    files.extend(cas.iter().map(|(k, p)| (k.clone(), p.as_path())));
    let mut errors: Vec<ConfigError> = files
        .into_iter()
        .filter_map(|(path, file)| {
            let problem = match std::fs::File::open(file).and_then(|f| f.metadata()) {
                Ok(meta) if meta.is_file() => return None,
                Ok(_) => "not a regular file".to_owned(),
                Err(e) => e.to_string(),
            };
            let mut shown = String::new();
            quote(&file.display().to_string(), &mut shown);
            Some(ConfigError::value(
                path,
                shown,
                format_args!("cannot open: {problem}"),
            ))
        })
        .collect();
    errors.extend(check_socket_dir(config));
    with_lines(config, errors)
}

/// `[admin] socket` must be in a directory that exists: the daemon binds
/// the socket but makes no directory (that is the service manager's, e.g.
/// systemd's `RuntimeDirectory=`, with its owner and mode).
fn check_socket_dir(config: &Config) -> Option<ConfigError> {
    let socket = config.admin.as_ref()?.socket.as_deref()?;
    let dir = socket.parent().filter(|d| !d.as_os_str().is_empty())?;
    let problem = match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return None,
        Ok(_) => format!("{} is not a directory", dir.display()),
        Err(e) => format!(
            "its directory {} cannot be used ({e}): create it first",
            dir.display()
        ),
    };
    let mut shown = String::new();
    quote(&socket.display().to_string(), &mut shown);
    Some(ConfigError::value("admin.socket", shown, problem))
}

/// Gives each error without a line the line of its key path in the file
/// `config` was read from: for problems found after parsing (files that
/// cannot be opened, a key that does not match its certificate). The
/// validated Config keeps no spans, so the file is read again (best
/// effort: it may have changed since; what cannot be placed keeps none).
pub fn with_lines(config: &Config, mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    if errors.iter().all(|e| e.line.is_some()) {
        return errors;
    }
    let text = match &config.text {
        Some(text) => text.to_string(),
        None => match std::fs::read_to_string(&config.source) {
            Ok(text) => text,
            Err(_) => return errors,
        },
    };
    let Ok(root) = DeTable::parse(&text) else {
        return errors;
    };
    let lines = Lines::new(&text);
    for error in errors.iter_mut().filter(|e| e.line.is_none()) {
        error.line = locate(root.get_ref(), &error.path).map(|offset| lines.line(offset));
    }
    errors
}

impl Ctx {
    fn config(&mut self, root: &DeTable<'_>, source: &Path) -> Config {
        self.walk(String::new(), 0, root, |c, t| {
            // Asked for in the order "accepted here" lists them; read in the
            // order their references need: pools, data centers, then DNS.
            let runtime = t.field("runtime");
            let log = t.field("log");
            let admin = t.field("admin");
            let geoip = t.field("geoip");
            let dns = t.field("dns");
            let datacenter = t.field("datacenter");
            let pool = t.field("pool");
            let listener = t.field("listener");
            let cluster = t.field("cluster");
            let runtime = runtime.and_then(|f| c.runtime(&f)).unwrap_or_default();
            let log = log.and_then(|f| c.log(&f)).unwrap_or_default();
            let admin = admin.and_then(|f| c.admin(&f));
            let geoip = geoip.and_then(|f| c.geoip(&f));
            let mut pool_names = Vec::new();
            let pools = pool
                .map(|f| c.pools(&f, &mut pool_names, cluster.is_some()))
                .unwrap_or_default();
            let mut dc_names = Vec::new();
            let datacenters = datacenter
                .map(|f| c.datacenters(&f, &mut dc_names, &pool_names))
                .unwrap_or_default();
            let dns = dns.and_then(|f| c.dns(&f, &dc_names));
            let listeners = listener
                .map(|f| c.listeners(&f, &pools, &pool_names))
                .unwrap_or_default();
            let cluster = cluster.and_then(|f| c.cluster(&f, Some(&dc_names)));
            Config {
                source: source.to_path_buf(),
                text: None,
                runtime,
                log,
                admin,
                geoip,
                dns,
                datacenters,
                pools,
                listeners,
                cluster,
            }
        })
    }

    pub(super) fn runtime(&mut self, f: &Field<'_, '_>) -> Option<RuntimeConfig> {
        self.table(f, "expected a [runtime] table", |c, t| {
            let worker_threads = c.maybe(t, "worker_threads", |c, f| {
                c.int(f, 1, 1024).map(|n| n as usize)
            });
            // 0 is meaningful here: stop at once, without waiting for anything.
            let shutdown_grace = c.opt(
                t,
                "shutdown_grace",
                RuntimeConfig::default().shutdown_grace,
                |c, f| c.duration(f, true),
            );
            let state_dir = c.opt(
                t,
                "state_dir",
                RuntimeConfig::default().state_dir,
                Ctx::path,
            );
            let huge_pages = c.opt(t, "huge_pages", true, Ctx::bool);
            Some(RuntimeConfig {
                worker_threads: worker_threads?,
                shutdown_grace: shutdown_grace?,
                state_dir: state_dir?,
                huge_pages: huge_pages?,
            })
        })
    }

    fn admin(&mut self, f: &Field<'_, '_>) -> Option<AdminConfig> {
        self.table(f, "expected an [admin] table", |c, t| {
            let listen = c.req(t, "listen", "\"127.0.0.1:9100\"", Ctx::bind);
            let token_file = c.maybe(t, "token_file", Ctx::path);
            let tls = c.maybe(t, "tls", Ctx::tls);
            if let Some(f) = t.field("tls")
                && f.get().as_array().is_some_and(|a| a.is_empty())
            {
                let why = "the admin listener's tls needs at least one certificate \
                           (or remove tls for plain HTTP)";
                c.bad(&f, why);
            }
            let base = c.base.clone();
            let socket = c.maybe(t, "socket", |c, f| {
                c.parsed(f, |s| unix_socket_path(&base, s))
            });
            let socket_mode = c.opt(t, "socket_mode", DEFAULT_SOCKET_MODE, |c, f| {
                c.parsed(f, file_mode)
            });
            Some(AdminConfig {
                listen: listen?,
                token_file: token_file?,
                tls: tls?.unwrap_or_default(),
                socket: socket?,
                socket_mode: socket_mode?,
            })
        })
    }

    /// The `[[kind]]` tables under `f`, each read by `read` with its name.
    /// Names are collected into `names` even when the rest of their table
    /// is bad, so that references to them are not also reported.
    pub(super) fn named_tables<'t, 'i, T>(
        &mut self,
        f: &Field<'t, 'i>,
        kind: &str,
        names: &mut Vec<String>,
        mut read: impl FnMut(&mut Self, &Tbl<'t, 'i>, Option<String>) -> Option<T>,
    ) -> Vec<T> {
        let Some(items) = self.array(
            f,
            &format!("expected [[{kind}]] tables (note the double brackets)"),
        ) else {
            return Vec::new();
        };
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for item in &items {
            let expected = format!("expected a [[{kind}]] table");
            let mut duplicate = false;
            let parsed = self.table(item, &expected, |c, t| {
                let name = c.req(t, "name", &format!("\"my-{kind}\""), |c, f| {
                    let name = c.parsed(f, ident)?;
                    match first_seen(&mut seen, name.clone(), &f.path) {
                        Some(first) => {
                            c.bad(f, format!("duplicate name: {first} is the same"));
                            duplicate = true;
                        }
                        None => names.push(name.clone()),
                    }
                    Some(name)
                });
                read(c, t, name)
            });
            // A second table of a name is reported once, above; what it
            // holds must not stand for that name in later checks (which
            // would then report the second table's settings against every
            // reference to the first).
            if !duplicate {
                out.extend(parsed);
            }
        }
        out
    }
}
