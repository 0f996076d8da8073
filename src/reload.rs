//! How a config comes into service, at start-up and on every reload
//! (SIGHUP, `POST /reload`): two steps.
//!
//! - [`check`]: parse and validate the file, and build every artifact it
//!   implies, once: TLS server configs, upstream connectors, the GeoIP
//!   locator, the DNS data. `geolb check` stops here.
//! - [`apply`]: diff against what runs. Changes that need a restart are
//!   refused; new listener and DNS sockets are bound (the last step that
//!   can fail, so a taken port rejects the reload whole); then the
//!   snapshot is compiled, swapped in with the DNS data, listeners start
//!   and stop, and a summary says what changed.
//!
//! A failure at any point leaves the running config serving untouched.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpListener;

use crate::config::{self, Config, ConfigError, ConfigErrors, Protocol};
use crate::daemon::{BoundListener, Daemon, bind_listener};
use crate::distribution::{Document, EtcdConfig};
use crate::dns::{self, DnsData, DnsSockets};
use crate::geoip::{self, Locator};
use crate::metrics;
use crate::notify;
use crate::overrides::FileStore;
use crate::proxy::tls::{self, CertInfo};
use crate::rules::{self, ErrorPages};
use crate::state::{self, ListenerId, Snapshot};
use crate::upstream::Upstream;

/// An https listener's TLS config and what its certificates say.
pub type LoadedTls = (Arc<rustls::ServerConfig>, Vec<CertInfo>);

/// A config that passed every check, with everything checking it built.
pub struct Checked {
    pub config: Config,
    /// Per listener, in config order: an https listener's TLS; None for
    /// the others.
    tls: Vec<Option<LoadedTls>>,
    /// Per pool, in config order.
    upstreams: Vec<Upstream>,
    /// Per listener, in config order: its `error_pages`, read.
    pages: Vec<Arc<ErrorPages>>,
    /// Compiled without a health view; [`apply`] gives it the snapshot's.
    dns: DnsData,
    /// `[admin] token_file`'s token: every admin POST must present it.
    pub admin_token: Option<Arc<str>>,
    /// `[admin] tls`: the admin listener's TLS, when it speaks HTTPS.
    admin_tls: Option<LoadedTls>,
    /// Valid but likely meant otherwise: printed by `geolb check`, logged
    /// when the config comes into service.
    pub warnings: Vec<ConfigError>,
}

impl Checked {
    /// What `geolb check` says of a valid config.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let backends: usize = c.pools.iter().map(|p| p.backends.len()).sum();
        format!(
            "ok: {} listener(s), {} pool(s) with {} backend(s), {} data center(s), {} zone(s)",
            c.listeners.len(),
            c.pools.len(),
            backends,
            c.datacenters.len(),
            c.dns.as_ref().map_or(0, |d| d.zones.len()),
        )
    }

    pub fn locator(&self) -> &Arc<Locator> {
        self.dns.locator()
    }

    /// The DS records of the signed zones, for `geolb check` to print.
    pub fn ds_records(&self) -> Vec<String> {
        self.dns.ds_records()
    }
}

/// Step one: everything `geolb check` reports, or the config with its
/// artifacts. `previous` lets a reload keep a GeoIP database whose file
/// did not change.
pub fn check(path: &Path, previous: Option<&Locator>) -> Result<Checked, ConfigErrors> {
    check_config(config::load(path)?, previous)
}

/// [`check`] of a document meant for etcd (`[cluster] config = "etcd"`)
/// joined with a node's local file (`local`): as that node reads it. A
/// document alone (`local` None) is checked as a whole config, its
/// relative paths resolved against `document_path`'s directory. Each
/// error names its line in the text it is in.
pub fn check_document(
    document: &str,
    document_path: &Path,
    local: Option<&Path>,
    previous: Option<&Locator>,
) -> Result<Checked, ConfigErrors> {
    let local_text = match local {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            ConfigError::at("", format_args!("cannot read {}: {e}", path.display()))
        })?),
        None => None,
    };
    let merged = config::Merged::new(
        document,
        document_path,
        local.zip(local_text.as_deref()).map(|(p, t)| (t, p)),
    )?;
    let mut checked = check_config(merged.parse()?, previous).map_err(|e| merged.place(e))?;
    checked.warnings = std::mem::take(&mut checked.warnings)
        .into_iter()
        .map(|w| merged.place_one(w))
        .collect();
    Ok(checked)
}

/// [`check`] past the parsing.
fn check_config(config: Config, previous: Option<&Locator>) -> Result<Checked, ConfigErrors> {
    let mut errors = config::check_files(&config);
    let tls = load_tls(&config, &mut errors);
    let upstreams = build_upstreams(&config, &mut errors);
    let pages = rules::load_pages(&config, &mut errors);
    let admin_token = read_admin_token(&config, &mut errors);
    let admin_tls = load_admin_tls(&config, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(config::with_lines(&config, errors)));
    }
    let locator = Arc::new(geoip::load(&config, previous)?);
    let dns = dns::compile(&config, locator, Arc::new(dns::AllUp))
        .map_err(|e| ConfigErrors(config::with_lines(&config, e)))?;
    let warnings = config::warnings(&config);
    Ok(Checked {
        config,
        tls,
        upstreams,
        pages,
        dns,
        admin_token,
        admin_tls,
        warnings,
    })
}

/// The bearer token of `[admin] token_file`, unless `check_files`
/// already said the file cannot be opened.
fn read_admin_token(config: &Config, errors: &mut Vec<ConfigError>) -> Option<Arc<str>> {
    const KEY: &str = "admin.token_file";
    let file = config.admin.as_ref()?.token_file.as_ref()?;
    if errors.iter().any(|e| e.path == KEY) {
        return None;
    }
    config::read_token(file)
        .map_err(|e| {
            let shown = format!("{:?}", file.display().to_string());
            errors.push(ConfigError::value(KEY, shown, e))
        })
        .ok()
}

/// Loads every https listener's certificates and keys, adding what is wrong
/// to `errors`. Files that `check_files` already reported are not tried
/// again, so each problem is said once.
fn load_tls(config: &Config, errors: &mut Vec<ConfigError>) -> Vec<Option<LoadedTls>> {
    tls::keep_ocsp_responses_in(&config.runtime.state_dir);
    config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let prefix = format!("listener[{i}].tls");
            let ca = format!("listener[{i}].client_auth.ca");
            if l.protocol != Protocol::Https
                || errors
                    .iter()
                    .any(|e| e.path.starts_with(&prefix) || e.path == ca)
            {
                return None;
            }
            if let Some(acme) = &l.acme {
                // Its certificates change on their own: the expiry gauge
                // asks the daemon's ACME loops, not this list.
                return crate::acme::prepare(i, acme, &config.runtime.state_dir)
                    .map(|(server, _)| (server, Vec::new()))
                    .map_err(|e| errors.push(e))
                    .ok();
            }
            tls::listener_server_config(i, &l.tls, l.client_auth.as_ref())
                .map_err(|e| errors.extend(e))
                .ok()
        })
        .collect()
}

/// `[admin] tls`, loaded as an https listener's is (same checks, same
/// messages, key paths `admin.tls[j].cert` and `.key`).
fn load_admin_tls(config: &Config, errors: &mut Vec<ConfigError>) -> Option<LoadedTls> {
    let certs = &config.admin.as_ref()?.tls;
    if certs.is_empty() || errors.iter().any(|e| e.path.starts_with("admin.tls")) {
        return None;
    }
    tls::admin_server_config(certs)
        .map_err(|e| errors.extend(e))
        .ok()
}

/// Each pool's connector, its CA file read as its connections will use
/// it, so that a bad one is a config error rather than failing every
/// request.
fn build_upstreams(config: &Config, errors: &mut Vec<ConfigError>) -> Vec<Upstream> {
    let mut upstreams = Vec::with_capacity(config.pools.len());
    for (i, pool) in config.pools.iter().enumerate() {
        let path = format!("pool[{i}].tls");
        if errors.iter().any(|e| e.path.starts_with(&path)) {
            continue;
        }
        match Upstream::new(pool) {
            Ok(upstream) => upstreams.push(upstream),
            Err(e) => errors.push(ConfigError::at(path, e)),
        }
    }
    upstreams
}

/// What a reload changed, for `POST /reload`.
#[derive(Debug, Default, Serialize)]
pub struct ReloadSummary {
    pub config_generation: u64,
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
    pub datacenters_added: Vec<String>,
    pub datacenters_removed: Vec<String>,
    pub datacenters_changed: Vec<String>,
    pub zones_changed: bool,
    /// From the reload's start to the new config serving.
    pub took_ms: f64,
}

impl ReloadSummary {
    /// What the reload changed, for its log line: `pools +a -b, ...`, or
    /// `nothing listed` (settings of things that stay are not itemized).
    pub fn changes(&self) -> String {
        let mut out = String::new();
        let lists: [(&str, &[String], &[String]); 4] = [
            ("pools", &self.pools_added, &self.pools_removed),
            ("backends", &self.backends_added, &self.backends_removed),
            ("listeners", &self.listeners_added, &self.listeners_removed),
            (
                "datacenters",
                &self.datacenters_added,
                &self.datacenters_removed,
            ),
        ];
        for (what, added, removed) in lists {
            if added.is_empty() && removed.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(what);
            for a in added {
                out.push_str(" +");
                out.push_str(a);
            }
            for r in removed {
                out.push_str(" -");
                out.push_str(r);
            }
        }
        let mut also = |what: &str| {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(what);
        };
        if !self.datacenters_changed.is_empty() {
            also(&format!(
                "datacenters changed {}",
                self.datacenters_changed.join(" ")
            ));
        }
        if self.zones_changed {
            also("zones changed");
        }
        if out.is_empty() {
            out.push_str("nothing listed");
        }
        out
    }
}

/// Re-reads the daemon's config file (with `[cluster] config = "etcd"`:
/// the local file and the newest document seen in etcd) and brings it
/// into service whole, or changes nothing; counted and logged either way.
pub async fn reload(daemon: &Arc<Daemon>) -> Result<ReloadSummary, ConfigErrors> {
    let _one_at_a_time = daemon.reload_lock.lock().await;
    let started = Instant::now();
    notify::reloading();
    let etcd = daemon.etcd_config.get().cloned();
    let document = etcd.as_ref().and_then(|e| e.wanted());
    // Parsing and compiling a large config (a 10,000-backend Maglev
    // table) must not stall the threads that serve traffic.
    let this = daemon.clone();
    let wanted = document.clone();
    let result = tokio::task::spawn_blocking(move || {
        let previous = this.dns.load_full();
        let previous = Some(previous.locator().as_ref());
        let checked = match (this.etcd_config.get(), &wanted) {
            (None, _) => {
                let checked = check(&this.config_path, previous)?;
                // What the file leaves out would otherwise be removed.
                if checked
                    .config
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.config == config::ConfigFrom::Etcd)
                {
                    let why = "switching to the config in etcd needs a restart \
                               (`geolb run --takeover`): this node reads its file whole until then";
                    return Err(ConfigError::at("cluster.config", why).into());
                }
                checked
            }
            (Some(_), Some(d)) => {
                let local = &this.config_path;
                check_document(&d.text, local, Some(local), previous)?
            }
            // Not at run time: start-up sets a document before serving.
            (Some(_), None) => {
                return Err(ConfigError::at("", "no config document from etcd yet").into());
            }
        };
        apply(&this, checked, Start::Now)
    })
    .await
    .unwrap_or_else(|e| {
        Err(ConfigError::at("", format_args!("the reload task failed: {e}")).into())
    });
    if let (Some(etcd), Some(document)) = (&etcd, document) {
        from_etcd(etcd, document, &result);
    }
    let outcome = if result.is_ok() { "success" } else { "failure" };
    ::metrics::counter!(metrics::CONFIG_RELOADS, "result" => outcome).increment(1);
    if result.is_err() {
        // The success side is set by `apply`, which start-up runs too.
        ::metrics::gauge!(metrics::CONFIG_LAST_RELOAD_SUCCESSFUL).set(0.0);
    }
    let serving = format!("serving config generation {}", daemon.generation());
    match &result {
        Ok(_) => notify::ready(&serving),
        Err(e) => notify::ready(&format!(
            "reload refused ({} error(s)); {serving}",
            e.0.len()
        )),
    }
    match result {
        Ok(mut summary) => {
            summary.took_ms = started.elapsed().as_micros() as f64 / 1000.0;
            tracing::info!(
                generation = summary.config_generation,
                took_ms = summary.took_ms,
                changed = summary.changes().as_str(),
                "config reloaded"
            );
            Ok(summary)
        }
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!("reload refused: {e}");
            }
            Err(errors)
        }
    }
}

/// Records what became of an etcd document: in force, or refused here
/// (when it is not the one in force: a local file that broke is no
/// fault of the document's).
fn from_etcd(etcd: &EtcdConfig, document: Document, result: &Result<ReloadSummary, ConfigErrors>) {
    match result {
        Ok(_) => etcd.served(document),
        Err(errors) => {
            let serving = etcd.in_force().map_or(0, |d| d.revision);
            if serving == document.revision {
                return;
            }
            tracing::error!(
                revision = document.revision,
                sha256 = %document.sha256,
                serving,
                "the config from etcd is refused on this node: the one in force keeps serving"
            );
            etcd.refused(&document, errors.0.iter().map(|e| e.to_string()).collect());
        }
    }
}

/// Beyond the longest check timeout, for a first round's results to land.
const FIRST_ROUND_MARGIN: Duration = Duration::from_millis(200);

/// When new listeners start accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At once (a reload: backends that stay keep their health).
    Now,
    /// Once every health check has a first result, or its timeout passed
    /// (start-up: the first requests must see real states).
    AfterFirstChecks,
}

/// Step two: brings `checked` into service on `daemon`. Runs on a blocking
/// thread: it waits for binds (and, with [`Start::AfterFirstChecks`], the
/// first health results) inside.
pub fn apply(
    daemon: &Daemon,
    checked: Checked,
    start: Start,
) -> Result<ReloadSummary, ConfigErrors> {
    for warning in &checked.warnings {
        tracing::warn!("config: {warning}");
    }
    let old = daemon.snapshot.load_full();
    if daemon.generation() > 0 {
        refuse_restart_only(&old.config, &checked.config)?;
    }
    // Before binding: the last step that can fail is the binding.
    let (dns_data, changed_zones) = checked
        .dns
        .continue_from(&daemon.dns.load())
        .map_err(|e| ConfigErrors(config::with_lines(&checked.config, e)))?;
    let changes = bind_new(daemon, &checked)?;

    // Nothing can fail from here on.
    let Checked {
        config,
        tls,
        upstreams,
        pages,
        dns: _,
        admin_token,
        admin_tls,
        warnings: _,
    } = checked;
    let config = Arc::new(config);
    // A reload may move the state directory: later changes are kept there.
    // A cluster's store stays: [cluster] is read at start-up only.
    if !daemon.registry.overrides.shared() {
        let store = FileStore::new(&config.runtime.state_dir);
        daemon.registry.overrides.set_store(Arc::new(store));
    }
    if daemon.generation() > 0 && old.config.cluster != config.cluster {
        tracing::warn!(
            "config: [cluster] changed: it is read at start-up only, the one in force stays until a restart"
        );
    }
    let new = state::compile(
        config.clone(),
        upstreams,
        pages,
        daemon.next_generation(),
        &daemon.health,
        &daemon.registry,
    );
    let dns_data = dns_data.with_health(Arc::new(DatacenterView(new.datacenters.clone())));
    if config.dns.is_some() {
        // Without [dns] no query is answered: no DNS series to show at 0.
        dns::register_series(&dns_data);
    }
    let mut summary = summarize(&old, &new);
    daemon.snapshot.store(Arc::new(new));
    let dns_data = Arc::new(dns_data);
    daemon.dns.store(dns_data.clone());
    dns_data.notify(changed_zones, &daemon.tasks, &daemon.shutdown);
    daemon.swap_tls(|id| {
        let i = config
            .listeners
            .iter()
            .position(|l| ListenerId::of(l) == *id)?;
        tls[i].as_ref().map(|(server, _)| server.clone())
    });
    daemon.run_acme(&config);
    daemon.set_limits(|id| config.listeners.iter().find(|l| ListenerId::of(l) == *id));
    daemon.certs.store(Arc::new(certificates(&config, &tls)));
    daemon.admin_token.store(Arc::new(admin_token));
    if let Some((server, infos)) = admin_tls {
        tls::warn_expiring("admin", &infos, std::time::SystemTime::now());
        tls::start_stapling(&infos);
        daemon.admin_tls.store(Some(server));
    }
    if start == Start::AfterFirstChecks {
        let limit = daemon.health.longest_timeout() + FIRST_ROUND_MARGIN;
        tokio::runtime::Handle::current().block_on(daemon.health.wait_first_round(limit));
    }
    summary.listeners_added = changes
        .listeners
        .iter()
        .map(|(_, b, _)| b.name.clone())
        .collect();
    for (socket, bound, server) in changes.listeners {
        daemon.start_listener(socket, bound, server);
    }
    summary.listeners_removed = daemon.stop_listeners(&changes.listeners_gone);
    for (listen, sockets) in changes.dns {
        daemon.start_dns(listen, sockets);
    }
    daemon.stop_dns(&changes.dns_gone);
    served_since(std::time::SystemTime::now());
    Ok(summary)
}

/// Compiles each change of the discovered backends into service
/// ([`rediscover`]) until shutdown. Changes that arrive while one is
/// compiled are taken together by the next.
pub async fn follow_discovery(daemon: Arc<Daemon>) {
    let mut changed = daemon.registry.discovered.subscribe();
    // Compiled once at once: what the watch read between the first
    // config's compile and the subscription above would otherwise wait
    // for the next change.
    loop {
        {
            let _one_at_a_time = daemon.reload_lock.lock().await;
            changed.borrow_and_update();
            let this = daemon.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || rediscover(&this)).await {
                tracing::error!(error = %e, "discovery: compiling the discovered backends failed");
            }
        }
        tokio::select! {
            moved = changed.changed() => if moved.is_err() { return },
            () = daemon.shutdown.cancelled() => return,
        }
    }
}

/// Brings the discovered backends in service now into a snapshot of the
/// running config (same generation: the config did not change), and the
/// DNS side's health view with it; keeps them in the state file. Runs off
/// the async workers, with the reload lock held so that it and a reload
/// never compile at once (a reload compiles the discovered set too).
pub fn rediscover(daemon: &Daemon) {
    let old = daemon.snapshot.load_full();
    let upstreams = old.pools.iter().map(|p| p.upstream.clone()).collect();
    let pages = old
        .config
        .listeners
        .iter()
        .map(|l| {
            old.listeners
                .get(&ListenerId::of(l))
                .map(|l| l.error_pages.clone())
                .unwrap_or_default()
        })
        .collect();
    let new = state::compile(
        old.config.clone(),
        upstreams,
        pages,
        old.generation,
        &daemon.health,
        &daemon.registry,
    );
    let view = Arc::new(DatacenterView(new.datacenters.clone()));
    daemon.snapshot.store(Arc::new(new));
    daemon
        .dns
        .rcu(|dns| Arc::new(dns.with_health(view.clone())));
    daemon.registry.discovered.persist();
}

/// The reload gauges for a config that came into service at `now`.
fn served_since(now: std::time::SystemTime) {
    let unix = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    ::metrics::gauge!(metrics::CONFIG_LAST_RELOAD_SUCCESSFUL).set(1.0);
    ::metrics::gauge!(metrics::CONFIG_LAST_RELOAD_SUCCESS_TIME).set(unix);
}

/// What a config adds to and removes from the running sockets.
struct SocketChanges {
    /// Bound, not yet accepting; with an https listener's TLS config.
    listeners: Vec<(
        TcpListener,
        BoundListener,
        Option<Arc<rustls::ServerConfig>>,
    )>,
    listeners_gone: Vec<ListenerId>,
    /// Bound, not yet served, by `dns.listen` address.
    dns: Vec<(SocketAddr, DnsSockets)>,
    dns_gone: Vec<SocketAddr>,
}

/// Binds every listener and DNS address `checked` has that the daemon does
/// not run yet, before anything changes: a taken port rejects the whole
/// config, naming each address that failed.
fn bind_new(daemon: &Daemon, checked: &Checked) -> Result<SocketChanges, ConfigErrors> {
    let config = &checked.config;
    let mut errors = Vec::new();
    let running = daemon.listener_ids();
    let mut listeners = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if running.contains(&ListenerId::of(l)) {
            continue;
        }
        match bind_listener(l, daemon.inherited_listener(&ListenerId::of(l))) {
            Ok((socket, bound)) => {
                let tls = checked.tls[i].as_ref().map(|(s, _)| s.clone());
                listeners.push((socket, bound, tls))
            }
            Err(e) => errors.push(ConfigError::value(
                format!("listener[{i}].bind"),
                format_args!("\"{}\"", l.bind),
                e,
            )),
        }
    }
    let dns_running = daemon.dns_listen();
    let dns_wanted = dns_listen(config);
    let mut dns = Vec::new();
    let mut dns_new = Vec::new();
    for &listen in dns_wanted.iter().filter(|a| !dns_running.contains(a)) {
        match daemon.inherited_dns(listen) {
            Some((udp, tcp)) => match DnsSockets::inherited(udp, tcp) {
                Ok(sockets) => dns.push((listen, sockets)),
                Err(e) => errors.push(ConfigError::at("dns.listen", e)),
            },
            None => dns_new.push(listen),
        }
    }
    let bind_dns = dns::bind(&dns_new, udp_threads(config));
    match tokio::runtime::Handle::current().block_on(bind_dns) {
        Ok(sockets) => dns.extend(dns_new.into_iter().zip(sockets)),
        Err(e) => errors.push(ConfigError::at("dns.listen", e)),
    };
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(SocketChanges {
        listeners,
        listeners_gone: running
            .into_iter()
            .filter(|id| !config.listeners.iter().any(|l| ListenerId::of(l) == *id))
            .collect(),
        dns,
        dns_gone: dns_running
            .into_iter()
            .filter(|a| !dns_wanted.contains(a))
            .collect(),
    })
}

fn dns_listen(config: &Config) -> Vec<SocketAddr> {
    config
        .dns
        .as_ref()
        .map(|d| d.listen.clone())
        .unwrap_or_default()
}

fn udp_threads(config: &Config) -> usize {
    config.dns.as_ref().map_or(1, |d| d.udp_threads)
}

/// What this version cannot change in place.
fn refuse_restart_only(old: &Config, new: &Config) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    for (i, l) in new.listeners.iter().enumerate() {
        if let Some(before) = old
            .listeners
            .iter()
            .find(|o| ListenerId::of(o) == ListenerId::of(l))
            && before.protocol != l.protocol
        {
            errors.push(ConfigError::at(
                format!("listener[{i}].protocol"),
                format_args!(
                    "the listener on {} changes protocol: move it to another bind address (or restart)",
                    l.bind
                ),
            ));
        }
    }
    let mut needs_restart = |path: &str, what: &str| {
        errors.push(ConfigError::at(
            path,
            format_args!("{what} needs a restart in this version"),
        ))
    };
    let (old_admin, new_admin) = (old.admin.as_ref(), new.admin.as_ref());
    if old_admin.map(|a| a.listen) != new_admin.map(|a| a.listen) {
        needs_restart("admin.listen", "changing the admin listener");
    } else if old_admin.is_some_and(|a| a.tls.is_empty())
        != new_admin.is_some_and(|a| a.tls.is_empty())
    {
        // Certificates alone are swapped in place, as an https listener's.
        needs_restart("admin.tls", "turning TLS on the admin listener on or off");
    }
    if old_admin.map(|a| &a.socket) != new_admin.map(|a| &a.socket) {
        needs_restart(
            "admin.socket",
            "adding, moving or removing the admin socket",
        );
    } else if socket_mode(old_admin) != socket_mode(new_admin) {
        needs_restart("admin.socket_mode", "changing the admin socket's mode");
    }
    if udp_threads(old) != udp_threads(new) {
        needs_restart("dns.udp_threads", "changing the number of DNS UDP threads");
    }
    // The logger is installed once, before anything serves.
    if old.log.format != new.log.format {
        needs_restart("log.format", "changing the log format");
    }
    if old.log.file != new.log.file {
        needs_restart("log.file", "changing the log file");
    }
    if old.log.access_file != new.log.access_file {
        needs_restart("log.access_file", "changing the access log file");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

fn socket_mode(admin: Option<&config::AdminConfig>) -> Option<u32> {
    admin.filter(|a| a.socket.is_some()).map(|a| a.socket_mode)
}

/// The DNS side's view of data-center health: the data centers of one
/// snapshot, so indexes always match the config the DNS data came from.
struct DatacenterView(Arc<[state::Datacenter]>);

impl dns::DatacenterHealth for DatacenterView {
    fn is_up(&self, index: usize) -> bool {
        self.0.get(index).is_some_and(state::Datacenter::healthy)
    }

    fn is_drained(&self, index: usize) -> bool {
        self.0.get(index).is_some_and(state::Datacenter::drained)
    }
}

/// (listener name, its certificates) for the expiry gauge; warns about the
/// ones close to expiry and starts (or keeps) their OCSP stapling.
fn certificates(config: &Config, tls: &[Option<LoadedTls>]) -> Vec<(String, Vec<CertInfo>)> {
    let now = std::time::SystemTime::now();
    config
        .listeners
        .iter()
        .zip(tls)
        .filter_map(|(l, t)| {
            let (_, infos) = t.as_ref()?;
            tls::warn_expiring(&l.name, infos, now);
            tls::start_stapling(infos);
            Some((l.name.clone(), infos.clone()))
        })
        .collect()
}

fn summarize(old: &Snapshot, new: &Snapshot) -> ReloadSummary {
    let pools =
        |s: &Snapshot| -> Vec<String> { s.pools.iter().map(|p| p.name.to_string()).collect() };
    let backends = |s: &Snapshot| -> Vec<String> {
        s.pools
            .iter()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .map(move |b| format!("{}/{}", p.name, b.label))
            })
            .collect()
    };
    let datacenters = |s: &Snapshot| -> Vec<String> {
        s.datacenters
            .iter()
            .map(|d| d.config.name.clone())
            .collect()
    };
    let diff = |a: &[String], b: &[String]| -> Vec<String> {
        let b: HashSet<&String> = b.iter().collect();
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    let (old_pools, new_pools) = (pools(old), pools(new));
    let (old_backends, new_backends) = (backends(old), backends(new));
    let (old_dcs, new_dcs) = (datacenters(old), datacenters(new));
    ReloadSummary {
        config_generation: new.generation,
        pools_added: diff(&new_pools, &old_pools),
        pools_removed: diff(&old_pools, &new_pools),
        backends_added: diff(&new_backends, &old_backends),
        backends_removed: diff(&old_backends, &new_backends),
        listeners_added: Vec::new(),
        listeners_removed: Vec::new(),
        datacenters_added: diff(&new_dcs, &old_dcs),
        datacenters_removed: diff(&old_dcs, &new_dcs),
        datacenters_changed: new
            .datacenters
            .iter()
            .filter(|d| {
                old.datacenters
                    .iter()
                    .any(|o| o.config.name == d.config.name && o.config != d.config)
            })
            .map(|d| d.config.name.clone())
            .collect(),
        zones_changed: old.config.dns.as_ref().map(|d| &d.zones)
            != new.config.dns.as_ref().map(|d| &d.zones),
        took_ms: 0.0,
    }
}
