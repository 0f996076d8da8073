//! Start-up, signals and shutdown order. Start-up brings the checked
//! config into service the way a reload does ([`reload::apply`] onto a
//! daemon running nothing), except that listeners open only once every
//! health check has a first result. Then SIGHUP reloads, SIGTERM/SIGINT
//! stop accepting and let in-flight work finish within the grace period.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::dns::{self, SharedDnsData};
use crate::health::HealthTable;
use crate::metrics;
use crate::notify;
use crate::reload::{self, Checked, Start};
use crate::state::{self, BackendRegistry, SharedSnapshot};

/// How often the GeoIP database file is looked at for a replacement.
const GEOIP_RECHECK: Duration = Duration::from_secs(1);

/// Runs the daemon until a signal stops it. `ready` is told the daemon
/// once everything serves (used by `geolb demo`).
pub async fn serve(
    config_path: PathBuf,
    checked: Checked,
    ready: Option<tokio::sync::oneshot::Sender<Arc<Daemon>>>,
) -> anyhow::Result<()> {
    let metrics = metrics::install().context("cannot install the metrics recorder")?;
    let admin_socket = match &checked.config.admin {
        Some(a) => Some(
            TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("admin: cannot bind {}", a.listen))?,
        ),
        None => None,
    };
    let grace = checked.config.runtime.shutdown_grace;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let health = HealthTable::new(shutdown.child_token());
    let registry = BackendRegistry::default();
    // Generation 0: nothing configured, nothing listening.
    let nothing = Arc::new(Config::default());
    let snapshot: SharedSnapshot = Arc::new(ArcSwap::from_pointee(state::compile(
        nothing.clone(),
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
    let first = daemon.clone();
    tokio::task::spawn_blocking(move || reload::apply(&first, checked, Start::AfterFirstChecks))
        .await
        .context("the start-up task failed")?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Also without a database now: a reload may add one.
    tasks.spawn(dns::watch_geoip(dns_data, GEOIP_RECHECK, shutdown.clone()));
    if let Some(socket) = admin_socket {
        tracing::info!(addr = %socket.local_addr()?, "admin listening");
        tasks.spawn(crate::admin::serve(socket, daemon.clone()));
    }
    if let Some(ready) = ready {
        let _ = ready.send(daemon.clone());
    }
    notify::ready(&format!(
        "serving config generation {}",
        daemon.generation()
    ));
    if let Some(interval) = notify::watchdog_interval() {
        tasks.spawn(notify::watchdog(interval, shutdown.clone()));
    }

    wait_for_stop(&daemon).await;
    notify::stopping();
    tracing::info!(grace = ?grace, "shutting down: no new connections, finishing in-flight requests");
    shutdown.cancel();
    tasks.close();
    tokio::select! {
        _ = tasks.wait() => tracing::info!("all connections finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; exiting with connections open"),
        _ = second_signal() => tracing::warn!("second signal; exiting at once"),
    }
    Ok(())
}

#[cfg(unix)]
async fn wait_for_stop(daemon: &Arc<Daemon>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
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
