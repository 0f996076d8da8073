//! Start-up, signals and shutdown order. Start-up brings the checked
//! config into service the way a reload does ([`reload::apply`] onto a
//! daemon running nothing), except that listeners open only once every
//! health check has a first result. Then SIGHUP reloads, SIGUSR1 reopens
//! the log files, SIGUSR2 starts a successor, SIGTERM/SIGINT stop
//! accepting and let in-flight work finish within the grace period.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, ConfigErrors, ConfigFrom};
use crate::daemon::Daemon;
use crate::distribution::{ConfigStore, Document, EtcdConfig};
use crate::dns::{self, SharedDnsData};
use crate::health::HealthTable;
use crate::metrics;
use crate::notify;
use crate::overrides::{FileStore, OverrideStore};
use crate::reload::{self, Checked, Start};
use crate::state::{self, BackendRegistry, SharedSnapshot};
use crate::takeover::{self, Inherited};

/// How often the GeoIP database file is looked at for a replacement.
const GEOIP_RECHECK: Duration = Duration::from_secs(1);
/// How often this node's data-center views are looked at for the cluster's
/// quorum: a change is published within it.
const VIEW_EVERY: Duration = Duration::from_millis(250);

/// A node's first config, and where it came from.
pub struct FirstConfig {
    pub checked: Checked,
    /// With `[cluster] config = "etcd"`: the node's etcd side and the
    /// document `checked` was read from.
    pub etcd: Option<(Arc<EtcdConfig>, Document)>,
    /// What to log once the logger is up (nothing logs before).
    pub notes: Vec<String>,
}

impl FirstConfig {
    pub fn file(checked: Checked) -> FirstConfig {
        FirstConfig {
            checked,
            etcd: None,
            notes: Vec::new(),
        }
    }
}

/// The config `geolb run` (and `geolb check`) starts with: the file at
/// `path`, or, when its `[cluster]` says `config = "etcd"`, the document
/// in etcd with the file's own sections. Never fails closed: with etcd
/// out of reach, or its document refused here, the copy last in service
/// (kept in the state directory) is used. The error is what to print.
pub fn first_config(path: &std::path::Path) -> Result<FirstConfig, String> {
    let shown = |what: &str, errors: ConfigErrors| {
        format!(
            "{}: {what}, {} error(s):\n{errors}",
            path.display(),
            errors.0.len()
        )
    };
    let node = config::local_cluster(path).map_err(|e| shown("invalid", e))?;
    let Some(cluster) = node.cluster.filter(|c| c.config == ConfigFrom::Etcd) else {
        return reload::check(path, None)
            .map(FirstConfig::file)
            .map_err(|e| shown("invalid", e));
    };
    let local = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let store = ConfigStore::new(cluster);
    let key = store.current_key();
    let etcd = Arc::new(EtcdConfig::new(
        store,
        local.clone(),
        &node.runtime.state_dir,
    ));
    let read = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(etcd.store.current());
    let saved = etcd.load_saved();
    let check = |d: &Document| reload::check_document(&d.text, &local, Some(&local), None);
    let mut refused = None;
    let why = match read {
        Ok(Some(document)) => {
            etcd.saw(document.clone());
            match check(&document) {
                Ok(checked) => {
                    return Ok(FirstConfig {
                        checked,
                        etcd: Some((etcd, document)),
                        notes: Vec::new(),
                    });
                }
                Err(errors) => {
                    let why = format!("{key} at revision {}: invalid here", document.revision);
                    let said = shown(&why, errors.clone());
                    etcd.refused(&document, errors.0.iter().map(|e| e.to_string()).collect());
                    refused = Some(document.revision);
                    said
                }
            }
        }
        Ok(None) => format!(
            "{}: nothing at {key} in etcd yet (push a config with `geolb config push FILE --config {}`)",
            path.display(),
            path.display()
        ),
        Err(e) => format!("{}: cannot read {key} from etcd ({e})", path.display()),
    };
    let Some(document) = saved.filter(|s| Some(s.revision) != refused) else {
        return Err(format!(
            "{why}\nand no other config is kept in {} (the copy last in service)",
            node.runtime.state_dir.display()
        ));
    };
    let checked = check(&document).map_err(|e| {
        let copy = format!(
            "the copy of revision {} (in {})",
            document.revision,
            node.runtime.state_dir.display()
        );
        format!("{why}\n{}", shown(&copy, e))
    })?;
    let notes = vec![format!(
        "{why}\nstarting with the copy last in service: revision {} (sha256 {}), until etcd sends a config",
        document.revision, document.sha256
    )];
    Ok(FirstConfig {
        checked,
        etcd: Some((etcd, document)),
        notes,
    })
}

/// Runs the daemon until a signal stops it. `ready` is told the daemon
/// once everything serves (used by `geolb demo`). With `takeover`, the
/// listening sockets of the geolb running with the same state directory
/// are taken over rather than bound (see [`takeover`]).
pub async fn serve(
    config_path: PathBuf,
    first: FirstConfig,
    ready: Option<tokio::sync::oneshot::Sender<Arc<Daemon>>>,
    takeover: bool,
) -> anyhow::Result<()> {
    let FirstConfig {
        checked,
        etcd,
        notes,
    } = first;
    for note in notes {
        tracing::warn!("{note}");
    }
    // SIGUSR1's default action ends the process: taken from the start, a
    // logrotate during the start-up (or a takeover) reopens late instead.
    let usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("cannot install the SIGUSR1 handler")?;
    let metrics = metrics::install().context("cannot install the metrics recorder")?;
    let takeover_path = takeover::socket_path(&checked.config.runtime.state_dir);
    // Resolved now: after a package upgrade the path names the new binary,
    // which is what SIGUSR2 starts.
    let exe = std::env::current_exe().context("cannot find the running binary")?;
    let mut inherited = if takeover {
        inherit(takeover_path.clone()).await?
    } else {
        Inherited::none()
    };
    let took_over = !inherited.is_empty();
    let admin_listen = checked.config.admin.as_ref().map(|a| a.listen);
    let admin_socket = match admin_listen {
        Some(listen) => Some(match inherited.admin(listen) {
            Some(fd) => {
                let socket = std::net::TcpListener::from(fd);
                socket.set_nonblocking(true)?;
                TcpListener::from_std(socket)?
            }
            None => TcpListener::bind(listen)
                .await
                .with_context(|| format!("admin: cannot bind {listen}"))?,
        }),
        None => None,
    };
    let admin_unix = checked
        .config
        .admin
        .as_ref()
        .and_then(|a| Some((a.socket.clone()?, a.socket_mode)));
    if let Some((path, _)) = &admin_unix {
        // Said before anything is bound; the socket itself comes later.
        crate::admin::socket::check(path)?;
    }
    let grace = checked.config.runtime.shutdown_grace;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let health = HealthTable::new(shutdown.child_token());
    let registry = BackendRegistry::default();
    let quorum = registry.quorum.clone();
    // Overrides made before a restart or upgrade act from the first request;
    // in a cluster, the last state seen (etcd may be out of reach now).
    let state_dir = &checked.config.runtime.state_dir;
    let cluster = checked.config.cluster.clone().map(|config| {
        let overrides = registry.overrides.clone();
        crate::cluster::Cluster::new(
            config,
            state_dir,
            overrides,
            tokio::runtime::Handle::current(),
        )
    });
    let store: Arc<dyn OverrideStore> = match &cluster {
        Some(cluster) => cluster.clone(),
        None => Arc::new(FileStore::new(state_dir)),
    };
    if cluster.is_some() {
        match registry.discovered.restore(state_dir) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                backends = n,
                "discovered backends restored: the last seen, served until etcd answers"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "discovered backends could not be restored; starting without them"
            ),
        }
    }
    let where_kept = store.describe();
    registry.overrides.set_store(store);
    match registry.overrides.restore() {
        Ok(0) => {}
        Ok(n) => tracing::warn!(overrides = n, from = %where_kept, "runtime overrides restored"),
        Err(e) => {
            tracing::error!(error = %e, "runtime overrides could not be restored; starting without them")
        }
    }
    // Generation 0: nothing configured, nothing listening.
    let nothing = Arc::new(Config::default());
    let snapshot: SharedSnapshot = Arc::new(ArcSwap::from_pointee(state::compile(
        nothing.clone(),
        Vec::new(),
        Vec::new(),
        0,
        &health,
        &registry,
    )));
    let no_dns = dns::compile(&nothing, checked.locator().clone(), Arc::new(dns::AllUp))
        .map_err(|e| anyhow::anyhow!("{}", crate::config::ConfigErrors(e)))?;
    let dns_data: SharedDnsData = Arc::new(ArcSwap::from_pointee(no_dns));
    let daemon = Arc::new(Daemon::new(
        config_path,
        snapshot,
        health,
        registry,
        metrics,
        admin_socket.as_ref().and_then(|s| s.local_addr().ok()),
        dns_data.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));
    daemon.inherit(inherited);
    if let Some(cluster) = cluster {
        tasks.spawn(cluster.clone().run(shutdown.clone()));
        let config = &checked.config.cluster;
        let (node, own) = config
            .as_ref()
            .map(|c| (c.node.clone(), c.datacenter.clone()))
            .unwrap_or_default();
        tasks.spawn(crate::daemon::publish_views(
            daemon.snapshot.clone(),
            quorum.clone(),
            node,
            own,
            VIEW_EVERY,
            shutdown.clone(),
        ));
        tasks.spawn(cluster.clone().run_quorum(quorum, shutdown.clone()));
        tasks.spawn(crate::discovery::run(
            cluster.clone(),
            daemon.registry.discovered.clone(),
            shutdown.clone(),
        ));
        let _ = daemon.cluster.set(cluster);
    }
    if let (Some(listen), Some(socket)) = (admin_listen, &admin_socket) {
        daemon.keep_admin_socket(listen, socket);
    }
    let first = daemon.clone();
    tokio::task::spawn_blocking(move || reload::apply(&first, checked, Start::AfterFirstChecks))
        .await
        .context("the start-up task failed")?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some((etcd, document)) = etcd {
        tracing::info!(
            revision = document.revision,
            sha256 = %document.sha256,
            key = %etcd.store.current_key(),
            "config from etcd in service"
        );
        if let Some(refused) = etcd.status().refused {
            // Refused before the metrics were installed: counted now.
            ::metrics::counter!(metrics::CONFIG_RELOADS, "result" => "failure").increment(1);
            tracing::error!(
                revision = refused.revision,
                errors = %refused.errors.join("; "),
                "the config from etcd is refused on this node: the copy last in service serves"
            );
        }
        etcd.served(document.clone());
        let _ = daemon.etcd_config.set(etcd.clone());
        let (latest, documents) = tokio::sync::watch::channel(Some(document));
        let stop = shutdown.clone();
        tasks.spawn(async move { etcd.store.watch(latest, stop).await });
        tasks.spawn(follow_config(daemon.clone(), documents));
    }
    if daemon.cluster.get().is_some() {
        tasks.spawn(reload::follow_discovery(daemon.clone()));
    }
    // Also without a database now: a reload may add one.
    tasks.spawn(dns::watch_geoip(dns_data, GEOIP_RECHECK, shutdown.clone()));
    tasks.spawn(crate::daemon::watch_datacenters(
        daemon.snapshot.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    ));
    if let Some(socket) = admin_socket {
        let tls = daemon.admin_tls.load().is_some();
        tracing::info!(tls, addr = %socket.local_addr()?, "admin listening");
        tasks.spawn(crate::admin::serve(socket, daemon.clone()));
    }
    // Bound only now, so that a `--takeover` that fails before serving
    // leaves the running process's socket file in place.
    let admin_unix = match admin_unix {
        Some((path, mode)) => {
            let (listener, file) = crate::admin::socket::bind(&path, mode)?;
            tracing::info!(path = %path.display(), mode = format!("{mode:04o}"), "admin API on a Unix socket");
            tasks.spawn(crate::admin::serve_unix(listener, daemon.clone()));
            Some(file)
        }
        None => None,
    };
    if let Some(ready) = ready {
        let _ = ready.send(daemon.clone());
    }
    // This process serves: the one it took over from (if any) may go.
    if let Err(e) = daemon.confirm_takeover() {
        tracing::warn!(error = %e, "cannot tell the previous process to stop; stop it by hand");
    }
    tasks.spawn(offer_takeover(takeover_path, daemon.clone()));
    if took_over {
        // Started by the previous main process (SIGUSR2), this one is the
        // service's main process from now on.
        notify::notify(&format!("MAINPID={}", std::process::id()));
    }
    notify::ready(&format!(
        "serving config generation {}",
        daemon.generation()
    ));
    if let Some(interval) = notify::watchdog_interval() {
        tasks.spawn(notify::watchdog(interval, shutdown.clone()));
    }

    wait_for_stop(&daemon, &exe, usr1).await;
    notify::stopping();
    tracing::info!(grace = ?grace, "shutting down: no new connections, finishing in-flight requests");
    shutdown.cancel();
    tasks.close();
    tokio::select! {
        _ = tasks.wait() => tracing::info!("all connections finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; exiting with connections open"),
        _ = second_signal() => tracing::warn!("second signal; exiting at once"),
    }
    if let Some(file) = admin_unix {
        file.remove_if_ours();
    }
    Ok(())
}

/// Reloads each new document the etcd watch brings, through the reload
/// SIGHUP runs; one refused here is not tried again unless asked (a
/// SIGHUP or `POST /reload` after fixing what it lacked on this node).
async fn follow_config(
    daemon: Arc<Daemon>,
    mut documents: tokio::sync::watch::Receiver<Option<Document>>,
) {
    let Some(etcd) = daemon.etcd_config.get() else {
        return;
    };
    loop {
        tokio::select! {
            changed = documents.changed() => if changed.is_err() { return },
            _ = daemon.shutdown.cancelled() => return,
        }
        let Some(document) = documents.borrow_and_update().clone() else {
            continue;
        };
        let serving = etcd.in_force().map_or(0, |d| d.revision);
        if document.revision == serving || etcd.was_refused(document.revision) {
            continue;
        }
        tracing::info!(
            revision = document.revision,
            sha256 = %document.sha256,
            serving,
            "a new config in etcd: reloading"
        );
        etcd.saw(document);
        let _ = reload::reload(&daemon).await;
    }
}

/// Asks the geolb running with our state directory for its sockets; none
/// running: a normal start.
async fn inherit(path: PathBuf) -> anyhow::Result<Inherited> {
    let asked = path.clone();
    let answer = tokio::task::spawn_blocking(move || takeover::request(&asked))
        .await
        .context("the takeover task failed")?;
    match answer {
        Ok(Some(inherited)) => {
            tracing::info!(path = %path.display(), "taking the listening sockets over from the running geolb");
            Ok(inherited)
        }
        Ok(None) => {
            tracing::info!(path = %path.display(), "no running geolb to take over from: starting normally");
            Ok(Inherited::none())
        }
        Err(e) => Err(anyhow::anyhow!("cannot take over: {e}")),
    }
}

/// SIGUSR2, as nginx's binary upgrade: starts `exe run --takeover` on the
/// same config. Started by this process, it stays in the service's cgroup
/// (and tells systemd it is the main process); it takes the sockets over,
/// and this one stops once it serves. If it fails, this one serves on.
fn start_successor(daemon: &Daemon, exe: &std::path::Path) {
    let spawned = tokio::process::Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(&daemon.config_path)
        .arg("--takeover")
        .stdin(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            tracing::info!(pid = child.id(), exe = %exe.display(), "SIGUSR2: started a new process to take over");
            // Reaped here if it ends while this process still runs.
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(status) if status.success() => {}
                    Ok(status) => tracing::error!(%status, "the new process failed; serving on"),
                    Err(e) => tracing::error!(error = %e, "the new process cannot be waited for"),
                }
            });
        }
        Err(e) => {
            tracing::error!(exe = %exe.display(), error = %e, "SIGUSR2: cannot start a new process")
        }
    }
}

/// Lets a later `geolb run --takeover` take this process's sockets; once
/// it serves, this process stops as on SIGTERM.
async fn offer_takeover(path: PathBuf, daemon: Arc<Daemon>) {
    let (sockets, stopping) = (daemon.clone(), daemon.clone());
    let served = takeover::serve(
        path,
        daemon.shutdown.clone(),
        move || sockets.handover(),
        move || {
            tracing::info!("a new process took the sockets over and serves: stopping");
            stopping.shutdown.cancel();
        },
    )
    .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "`geolb run --takeover` cannot replace this process");
    }
}

#[cfg(unix)]
async fn wait_for_stop(
    daemon: &Arc<Daemon>,
    exe: &std::path::Path,
    mut usr1: tokio::signal::unix::Signal,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr2)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined2()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = reload::reload(daemon).await;
            }
            // nginx's convention: logrotate renames the files, then signals.
            _ = usr1.recv() => crate::logging::reopen(),
            _ = usr2.recv() => start_successor(daemon, exe),
            _ = daemon.shutdown.cancelled() => return,
        }
    }
}

#[cfg(unix)]
async fn second_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
