//! `geolb register`: keeps one backend registered for a pool's
//! `discovery` (see [`crate::discovery`] for the key and value) while it
//! runs, for scripts and systemd units (`ExecStart=geolb register ...`).
//!
//! It grants a lease of `--ttl`, puts the key under it and keeps the lease
//! alive; when etcd is lost it tries the next endpoint and registers
//! again under a new lease. SIGTERM or SIGINT revokes the lease (which
//! deletes the key: every geolb stops sending new requests at once) and
//! exits 0; a process that dies without that leaves when its lease
//! expires. A command like `lookup`: it alone uses `anyhow`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use etcd_client::{Client, PutOptions};
use tokio::signal::unix::{SignalKind, signal};

use crate::cluster::{KeptLease, connect_options, timed};
use crate::config::ClusterConfig;
use crate::discovery::Registered;
use crate::locked;

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long stopping waits for etcd to revoke the lease.
const REVOKE_WITHIN: Duration = Duration::from_secs(2);

/// `geolb register`'s arguments.
#[derive(clap::Args)]
pub struct Options {
    /// etcd client URLs, comma-separated [default with --config: its
    /// [cluster] etcd].
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The [cluster] prefix [default: the config's, else /geolb/].
    #[arg(long)]
    pub prefix: Option<String>,
    /// The pool: the key goes under pools/POOL/ (or, with --config, under
    /// that pool's discovery prefix).
    #[arg(long)]
    pub pool: String,
    /// The backend's IP:port, as geolb will connect to it.
    #[arg(long)]
    pub address: SocketAddr,
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// The lease's TTL: a register that dies is gone from every pool this
    /// long after. Whole seconds, at least 2s.
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    pub ttl: Duration,
    /// Shown in /status as registered_by [default: the host name].
    #[arg(long)]
    pub node: Option<String>,
    /// A geolb config whose [cluster] (endpoints, TLS, credentials,
    /// prefix) and pool discovery prefix are used.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// Where to register and how to connect.
struct Target {
    cluster: ClusterConfig,
    key: String,
    registration: Registered,
    ttl: Duration,
}

fn target(o: Options) -> anyhow::Result<Target> {
    let secs = o.ttl.as_secs();
    if secs < 2 || o.ttl.subsec_nanos() != 0 {
        bail!("--ttl: whole seconds, at least 2s (etcd's shortest lease)");
    }
    if !(1..=crate::discovery::MAX_WEIGHT).contains(&o.weight) {
        bail!("--weight: 1 to {}", crate::discovery::MAX_WEIGHT);
    }
    let file = o
        .config
        .as_ref()
        .map(|path| {
            crate::config::load(path)
                .map_err(|e| anyhow!("{}: invalid config:\n{e}", path.display()))
        })
        .transpose()?;
    let node = o.node.clone().unwrap_or_else(host_name);
    let mut cluster = match file.as_ref().map(|c| c.cluster.clone()) {
        Some(Some(cluster)) => cluster,
        Some(None) => bail!(
            "{}: no [cluster] table: give the endpoints with --etcd",
            o.config
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        ),
        None => ClusterConfig::with_defaults(Vec::new(), node.clone()),
    };
    if !o.etcd.is_empty() {
        cluster.etcd = o.etcd.clone();
    }
    if cluster.etcd.is_empty() {
        bail!("no etcd endpoint: give --etcd URL[,URL] or --config with a [cluster] table");
    }
    if let Some(url) = cluster
        .etcd
        .iter()
        .find(|u| !u.starts_with("http://") && !u.starts_with("https://"))
    {
        bail!("--etcd {url:?}: expected a URL like http://127.0.0.1:2379");
    }
    if let Some(prefix) = &o.prefix {
        if !prefix.starts_with('/') || !prefix.ends_with('/') {
            bail!("--prefix {prefix:?}: starts and ends with '/', like \"/geolb/\"");
        }
        cluster.prefix = prefix.clone();
    }
    // The pool's own prefix when the config names the pool, else the
    // convention the README gives.
    let relative = file
        .as_ref()
        .and_then(|c| c.pools.iter().find(|p| p.name == o.pool))
        .and_then(|p| p.discovery.as_ref())
        .map_or_else(|| format!("pools/{}/", o.pool), |d| d.prefix.clone());
    Ok(Target {
        key: format!("{}{relative}{}", cluster.prefix, o.address),
        cluster,
        registration: Registered {
            address: o.address,
            weight: o.weight,
            node,
            at: String::new(),
        },
        ttl: o.ttl,
    })
}

/// The machine's name, for `registered_by` (uname(2): /proc may be
/// hidden by the unit's sandbox).
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|s| s.into_string().ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Registers until SIGTERM or SIGINT, then revokes.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let target = target(options)?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // The lease in force and a client to revoke it with.
    let held: Mutex<Option<(Client, i64)>> = Mutex::new(None);
    let mut backoff = MIN_BACKOFF;
    let mut at = 0;
    loop {
        let began = Instant::now();
        let ended = tokio::select! {
            ended = session(&target, at, &held) => ended,
            _ = term.recv() => return revoke(&target, &held, "SIGTERM").await,
            _ = int.recv() => return revoke(&target, &held, "SIGINT").await,
        };
        at = (at + 1) % target.cluster.etcd.len();
        if began.elapsed() > MAX_BACKOFF {
            backoff = MIN_BACKOFF;
        }
        tracing::warn!(error = %ended, retry_in = ?backoff, key = %target.key, "register: lost etcd, registering again");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = term.recv() => return revoke(&target, &held, "SIGTERM").await,
            _ = int.recv() => return revoke(&target, &held, "SIGINT").await,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: a lease, the key under it, keep-alives until
/// something fails. Returns why it ended.
async fn session(target: &Target, at: usize, held: &Mutex<Option<(Client, i64)>>) -> String {
    let cluster = &target.cluster;
    let dial = cluster.dial_timeout;
    let url = &cluster.etcd[at];
    let options = match connect_options(cluster) {
        Ok(options) => options,
        Err(e) => return e,
    };
    let mut client = match timed(dial, Client::connect([url], Some(options))).await {
        Ok(client) => client,
        Err(e) => return format!("connecting to {url}: {e}"),
    };
    let lease = match timed(dial, client.lease_grant(target.ttl.as_secs() as i64, None)).await {
        Ok(lease) => lease.id(),
        Err(e) => return format!("granting a lease: {e}"),
    };
    *locked(held) = Some((client.clone(), lease));
    let mut kept = match KeptLease::start(&mut client, lease, target.ttl, dial).await {
        Ok(kept) => kept,
        Err(e) => return e,
    };
    let mut registration = target.registration.clone();
    registration.at = crate::logging::rfc3339_utc(std::time::SystemTime::now());
    let put = client.put(
        target.key.as_str(),
        registration.value(),
        Some(PutOptions::new().with_lease(lease)),
    );
    if let Err(e) = timed(dial, put).await {
        return format!("putting {}: {e}", target.key);
    }
    tracing::info!(key = %target.key, lease = format!("{lease:x}"), ttl = ?target.ttl, endpoint = %url, "registered");
    crate::notify::ready(&format!("registered {}", target.key));
    kept.hold().await
}

/// Revokes the lease in force (deleting the key), within
/// [`REVOKE_WITHIN`]: an unreachable etcd must not hold the stop up, the
/// lease expires anyway.
async fn revoke(
    target: &Target,
    held: &Mutex<Option<(Client, i64)>>,
    signal: &str,
) -> anyhow::Result<()> {
    crate::notify::stopping();
    let Some((mut client, lease)) = locked(held).take() else {
        tracing::info!(%signal, "stopping: nothing was registered");
        return Ok(());
    };
    let limit = target.cluster.dial_timeout.min(REVOKE_WITHIN);
    match timed(limit, client.lease_revoke(lease)).await {
        Ok(_) => tracing::info!(%signal, key = %target.key, "deregistered: the lease is revoked"),
        Err(e) => tracing::warn!(
            %signal,
            key = %target.key,
            error = %e,
            "cannot revoke the lease: the key goes when it expires"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            etcd: vec!["http://127.0.0.1:2379".into()],
            prefix: None,
            pool: "web".into(),
            address: "10.0.0.5:8080".parse().unwrap(),
            weight: 1,
            ttl: Duration::from_secs(10),
            node: Some("web-3".into()),
            config: None,
        }
    }

    #[test]
    fn the_key_is_the_pools_convention_or_its_configured_prefix() {
        let t = target(options()).unwrap();
        assert_eq!(t.key, "/geolb/pools/web/10.0.0.5:8080");
        assert_eq!(t.registration.node, "web-3");
        let t = target(Options {
            prefix: Some("/site/".into()),
            ..options()
        })
        .unwrap();
        assert_eq!(t.key, "/site/pools/web/10.0.0.5:8080");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("geolb.toml");
        std::fs::write(
            &file,
            "[cluster]\netcd = [\"http://10.0.0.1:2379\"]\nnode = \"lb\"\nprefix = \"/lb/\"\n\
             [[pool]]\nname = \"web\"\ndiscovery = { prefix = \"frontends/\" }\n",
        )
        .unwrap();
        let t = target(Options {
            etcd: Vec::new(),
            config: Some(file.clone()),
            ..options()
        })
        .unwrap();
        assert_eq!(t.key, "/lb/frontends/10.0.0.5:8080");
        assert_eq!(t.cluster.etcd, ["http://10.0.0.1:2379"]);
        let t = target(Options {
            config: Some(file),
            ..options()
        })
        .unwrap();
        assert_eq!(t.cluster.etcd, ["http://127.0.0.1:2379"], "--etcd wins");
    }

    #[test]
    fn bad_arguments_are_refused_before_anything_is_written() {
        let said = |o: Options| target(o).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            said(Options {
                ttl: Duration::from_millis(1500),
                ..options()
            })
            .contains("at least 2s")
        );
        assert!(
            said(Options {
                weight: 0,
                ..options()
            })
            .contains("--weight")
        );
        assert!(
            said(Options {
                etcd: Vec::new(),
                ..options()
            })
            .contains("no etcd endpoint")
        );
        assert!(
            said(Options {
                etcd: vec!["127.0.0.1:2379".into()],
                ..options()
            })
            .contains("expected a URL")
        );
        assert!(
            said(Options {
                prefix: Some("geolb".into()),
                ..options()
            })
            .contains("--prefix")
        );
    }
}
