//! `geolb lookup`: why a client gets the answer it gets, for a person in
//! the middle of a drill. The decision is made by the same code the server
//! runs; only the data centers' states come from the running daemon's
//! `/status` (when `--admin` is given) instead of the health table.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::ConfigFrom;
use crate::dns::{self, AllUp, DcState, Tier};
use crate::geoip::{Location, LocationSource};

const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// The report of `geolb lookup --config PATH IP [--name NAME] [--admin ADDR]`.
/// An error only when the config cannot be used at all.
pub async fn run(
    config_path: &Path,
    ip: IpAddr,
    name: Option<&str>,
    admin: Option<SocketAddr>,
) -> anyhow::Result<String> {
    let path = config_path.to_path_buf();
    // Reading the config and the GeoIP database is blocking file work.
    let data = tokio::task::spawn_blocking(move || -> anyhow::Result<dns::DnsData> {
        // A node's file with `[cluster] config = "etcd"` is read with its
        // document, as `geolb run` reads it.
        let config = match crate::config::local_cluster(&path) {
            Ok(node)
                if node
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.config == ConfigFrom::Etcd) =>
            {
                crate::app::first_config(&path)
                    .map_err(|e| anyhow!("{e}"))?
                    .checked
                    .config
            }
            _ => crate::config::load(&path)
                .map_err(|e| anyhow!("{}: invalid config:\n{e}", path.display()))?,
        };
        let locator = crate::geoip::load(&config, None).map_err(|e| anyhow!("{e}"))?;
        dns::compile(&config, Arc::new(locator), Arc::new(AllUp)).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow!("{}: invalid config:\n{}", path.display(), lines.join("\n"))
        })
    })
    .await
    .context("lookup task failed")??;

    let states = match admin {
        Some(addr) => Some(fetch_status(addr).await.map_err(|e| (addr, e))),
        None => None,
    };
    let location = data.locator().locate(ip);

    let mut out = String::new();
    client_section(&mut out, ip, &location, &data);
    out.push('\n');
    let known: Option<&HashMap<String, DcState>> = match &states {
        Some(Ok(map)) => {
            let _ = writeln!(
                out,
                "data center states: from the running daemon (http://{}/status)",
                admin.map(|a| a.to_string()).unwrap_or_default()
            );
            Some(map)
        }
        Some(Err((addr, error))) => {
            let _ = writeln!(
                out,
                "data center states: unknown: cannot read http://{addr}/status ({error});\n  \
                 ranked as if healthy, with drain from the config file"
            );
            None
        }
        None => {
            let _ = writeln!(
                out,
                "data center states: unknown (no --admin given);\n  \
                 ranked as if healthy, with drain from the config file"
            );
            None
        }
    };
    let state_of = |name: &str| known.and_then(|map| map.get(name).copied());

    let indexes: Vec<usize> = match name {
        Some(name) => match data.geo_index(name) {
            Some(i) => vec![i],
            None => {
                let all: Vec<String> = (0..data.geo_count())
                    .map(|i| data.explain(i, ip, &location, &|_| None).name)
                    .collect();
                let _ = writeln!(
                    out,
                    "\n{name} is not a geo name (geo names: {})",
                    if all.is_empty() {
                        "none".to_owned()
                    } else {
                        all.join(", ")
                    }
                );
                return Ok(out);
            }
        },
        None => (0..data.geo_count()).collect(),
    };
    if indexes.is_empty() {
        let _ = writeln!(out, "\nno [[dns.geo]] names are configured");
    }
    for i in indexes {
        let e = data.explain(i, ip, &location, &state_of);
        let _ = writeln!(
            out,
            "\n{} (ttl {}s, {} answer{})",
            e.name,
            e.ttl,
            e.answers,
            if e.answers == 1 { "" } else { "s" }
        );
        if let Some(map) = &e.map {
            let _ = writeln!(out, "  map:        {map}");
        }
        if !e.excluded.is_empty() {
            let _ = writeln!(
                out,
                "  excluded:   {} (kept from this region by the map)",
                e.excluded.join(", ")
            );
        }
        if let Some((shares, picked)) = &e.split {
            let _ = writeln!(
                out,
                "  split:      {}; this client network starts at {picked}",
                shares_text(shares, "weight")
            );
        }
        let _ = writeln!(out, "  #  {:<18} {:>10}  state", "data center", "distance");
        for (rank, c) in e.candidates.iter().enumerate() {
            let distance = c
                .distance_km
                .map_or_else(|| "-".to_owned(), |d| format!("{d:.0} km"));
            let state = match c.state {
                Some(s) => match (s.up, s.drain) {
                    (true, false) => "up",
                    (false, false) => "down",
                    (true, true) => "drained",
                    (false, true) => "down, drained",
                }
                .to_owned(),
                None if c.config_drain => "unknown (drained in the config)".to_owned(),
                None => "unknown".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<2} {:<18} {:>10}  {state}{}{}",
                rank + 1,
                c.name,
                distance,
                if c.outside {
                    "  (outside the region: only if none inside is available)"
                } else {
                    ""
                },
                if c.chosen { "  <- answer" } else { "" }
            );
        }
        match e.tier {
            Tier::Available => {}
            Tier::Undrained => {
                let _ = writeln!(
                    out,
                    "  no candidate is up and undrained: failing open among the undrained ones, \
                     health ignored"
                );
            }
            Tier::All => {
                let _ = writeln!(
                    out,
                    "  every candidate is drained: failing open among all of them"
                );
            }
        }
        if e.outside {
            let _ = writeln!(
                out,
                "  nothing inside the region is available: answered from outside it \
                 (failover_outside = true)"
            );
        }
        if let Some((failed, shares, landed)) = &e.spill {
            let _ = writeln!(
                out,
                "  spill-over: {failed} is not available; its clients spread over {}; \
                 this client network lands on {landed}",
                shares_text(shares, "capacity")
            );
        }
        for pick in &e.picks {
            let _ = writeln!(out, "  weighted:   {pick}");
        }
        let _ = writeln!(
            out,
            "  ECS scope:  /{} for this name (the answer holds for that network)",
            e.scope
        );
        let list = |v: &[IpAddr]| {
            if v.is_empty() {
                "none (NOERROR, no answers)".to_owned()
            } else {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(out, "  answer A:    {}", list(&e.a));
        let _ = writeln!(out, "  answer AAAA: {}", list(&e.aaaa));
        let scope = data.ecs_scope(i, ip);
        let widened = if scope < location.prefix_len {
            format!(
                "wider than the deciding network's /{}: its neighbours get the same answer",
                location.prefix_len
            )
        } else {
            "the deciding network's own".to_owned()
        };
        let _ = writeln!(
            out,
            "  ECS scope:   /{scope} ({widened}; what a resolver sending this client's \
             subnet is told it may share)"
        );
    }
    Ok(out)
}

/// "eu-west 70 (70%), eu-canary 30 (30%)".
fn shares_text(shares: &[(String, u32)], what: &str) -> String {
    let total: u64 = shares.iter().map(|(_, w)| u64::from(*w)).sum();
    shares
        .iter()
        .map(|(name, w)| {
            let percent = match total {
                0 => 100.0 / shares.len() as f64,
                t => 100.0 * f64::from(*w) / t as f64,
            };
            format!("{name} ({what} {w}, {percent:.0}%)")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn client_section(out: &mut String, ip: IpAddr, l: &Location, data: &dns::DnsData) {
    let db = data.locator().database();
    let _ = writeln!(out, "client {ip}");
    let source = match (l.source, db) {
        (LocationSource::Override, _) => "a [[geoip.network]] override".to_owned(),
        (LocationSource::Database, Some(db)) => format!(
            "the GeoIP database {} ({})",
            db.path().display(),
            db.database_type()
        ),
        (LocationSource::Miss, Some(db)) => format!(
            "nothing: neither an override nor the GeoIP database {} has it",
            db.path().display()
        ),
        _ => "nothing: no GeoIP database is configured and no override has it".to_owned(),
    };
    let _ = writeln!(out, "  placed by:  {source}");
    let _ = writeln!(out, "  network:    {}/{}", l.network.0, l.network.1);
    let mut place: Vec<&str> = Vec::new();
    place.extend(l.city.as_deref());
    place.extend(l.country.as_deref());
    place.extend(l.continent.as_deref());
    let place = if place.is_empty() {
        String::new()
    } else {
        format!("{} ", place.join(", "))
    };
    match l.coords {
        Some(c) => {
            let _ = writeln!(out, "  location:   {place}({:.4}, {:.4})", c.lat, c.lon);
        }
        None => {
            let _ = writeln!(
                out,
                "  location:   {place}unknown coordinates: answers use each geo name's \
                 configured data-center order"
            );
        }
    }
    let _ = writeln!(
        out,
        "  decided by: /{} (the database network or override deciding, in this address's family; \
         each geo name's ECS scope below may be wider)",
        l.prefix_len
    );
}

/// Why the daemon's data-center states could not be had.
#[derive(Debug, thiserror::Error)]
enum StatusError {
    #[error("{0}")]
    Connect(#[from] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP {0}")]
    Status(http::StatusCode),
    #[error("not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("no \"datacenters\" list in the JSON")]
    NoDatacenters,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// `name -> state` from the daemon's `GET /status`.
async fn fetch_status(addr: SocketAddr) -> Result<HashMap<String, DcState>, StatusError> {
    let fetch = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = http::Request::new(Empty::<Bytes>::new());
        *request.uri_mut() = http::Uri::from_static("/status");
        if let Ok(host) = http::HeaderValue::try_from(addr.to_string()) {
            request.headers_mut().insert(http::header::HOST, host);
        }
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            return Err(StatusError::Status(response.status()));
        }
        let body = response.into_body().collect().await?.to_bytes();
        parse_status(&body)
    };
    tokio::time::timeout(STATUS_TIMEOUT, fetch)
        .await
        .map_err(|_| StatusError::Timeout(STATUS_TIMEOUT))?
}

fn parse_status(body: &[u8]) -> Result<HashMap<String, DcState>, StatusError> {
    let json: serde_json::Value = serde_json::from_slice(body)?;
    let list = json
        .get("datacenters")
        .and_then(|d| d.as_array())
        .ok_or(StatusError::NoDatacenters)?;
    Ok(list
        .iter()
        .filter_map(|dc| {
            let name = dc.get("name")?.as_str()?.to_owned();
            let up = dc.get("up")?.as_bool()?;
            let drain = dc.get("drain").and_then(|d| d.as_bool()).unwrap_or(false);
            Some((name, DcState { up, drain }))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_is_read_by_name() {
        let body = br#"{"config_generation": 3, "datacenters": [
            {"name": "eu-west", "up": false, "drain": false},
            {"name": "us-east", "up": true, "drain": true}]}"#;
        let states = parse_status(body).unwrap();
        assert_eq!(
            states["eu-west"],
            DcState {
                up: false,
                drain: false
            }
        );
        assert!(states["us-east"].drain);
        assert!(parse_status(b"{}").is_err());
        assert!(parse_status(b"<html>").is_err());
    }
}
