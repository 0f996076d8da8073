//! `[cluster]`: the etcd cluster this node shares overrides through.

use std::collections::HashMap;
use std::time::Duration;

use super::model::{ClusterConfig, ConfigFrom};
use super::values::{ident, parse_url};
use super::walk::{Ctx, Field, Tbl, first_seen};

/// `dial_timeout`'s default: long enough for a TLS handshake across a
/// continent, short enough that a dead endpoint does not hold start-up.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// `lease`'s default: a dead node stops counting within 10 s, and keeping
/// the lease alive (every third of it) costs a request every few seconds.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

impl ClusterConfig {
    /// `[cluster]` with `etcd` and `node` and every other key at its
    /// default (for `geolb register --etcd` without a config).
    pub fn with_defaults(etcd: Vec<String>, node: String) -> ClusterConfig {
        ClusterConfig {
            etcd,
            prefix: "/geolb/".to_owned(),
            node,
            datacenter: None,
            ca: None,
            cert: None,
            key: None,
            user: None,
            password_file: None,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            lease: DEFAULT_LEASE,
            config: ConfigFrom::File,
        }
    }
}

impl Ctx {
    /// `datacenters`: the names `datacenter` may give; None when they are
    /// not known (the local file of a node whose data centers are in etcd).
    pub(super) fn cluster(
        &mut self,
        f: &Field<'_, '_>,
        datacenters: Option<&[String]>,
    ) -> Option<ClusterConfig> {
        self.table(f, "expected a [cluster] table", |c, t| {
            let etcd = c.req(
                t,
                "etcd",
                "[\"http://127.0.0.1:2379\"]",
                Ctx::etcd_endpoints,
            );
            let prefix = c.opt(t, "prefix", "/geolb/".to_owned(), |c, f| {
                c.parsed(f, key_prefix)
            });
            let node = c.req(t, "node", "\"eu-west-1\"", |c, f| c.parsed(f, ident));
            let datacenter = c.maybe(t, "datacenter", |c, f| match datacenters {
                Some(names) => c.reference(f, "datacenter", names),
                None => c.parsed(f, ident),
            });
            let ca = c.maybe(t, "ca", Ctx::path);
            let cert = c.maybe(t, "cert", Ctx::path);
            let key = c.maybe(t, "key", Ctx::path);
            let user = c.maybe(t, "user", |c, f| {
                c.parsed(f, |s| match s.is_empty() || s.contains(':') {
                    true => Err("expected an etcd user name (not empty, no ':')".to_owned()),
                    false => Ok(s.to_owned()),
                })
            });
            let password_file = c.maybe(t, "password_file", Ctx::path);
            let dial_timeout = c.opt(t, "dial_timeout", DEFAULT_DIAL_TIMEOUT, |c, f| {
                c.duration(f, false)
            });
            let lease = c.opt(t, "lease", DEFAULT_LEASE, |c, f| {
                let d = c.duration(f, false)?;
                // etcd rounds a TTL to whole seconds and refuses less than
                // its minimum (about 2 s with default election settings).
                if d < Duration::from_secs(2) || d.subsec_nanos() != 0 {
                    c.bad(
                        f,
                        "expected whole seconds, at least \"2s\" (etcd's shortest lease)",
                    );
                    return None;
                }
                Some(d)
            });
            let config = c.opt(t, "config", ConfigFrom::File, |c, f| {
                c.parsed(f, |s| match s {
                    "file" => Ok(ConfigFrom::File),
                    "etcd" => Ok(ConfigFrom::Etcd),
                    _ => Err("expected \"file\" (this file, whole) or \"etcd\" \
                              (PREFIX config/current, pushed with `geolb config push`)"
                        .to_owned()),
                })
            });
            half_pair(c, t, "cert", "key", "a client certificate");
            half_pair(c, t, "user", "password_file", "etcd authentication");
            let etcd = etcd?;
            let tls_wanted = cert.as_ref().is_some_and(Option::is_some)
                || ca.as_ref().is_some_and(Option::is_some);
            let any_https = etcd.iter().any(|u| u.starts_with("https://"));
            let any_http = etcd.iter().any(|u| u.starts_with("http://"));
            if any_https
                && any_http
                && let Some(f) = t.field("etcd")
            {
                c.bad(
                    &f,
                    "mixes http:// and https:// endpoints: one cluster speaks one or the other",
                );
            }
            if tls_wanted
                && any_http
                && let Some(f) = t.field(if ca.as_ref().is_some_and(Option::is_some) {
                    "ca"
                } else {
                    "cert"
                })
            {
                c.bad(
                    &f,
                    "TLS settings for http:// endpoints: write the endpoints as https://",
                );
            }
            Some(ClusterConfig {
                etcd,
                prefix: prefix?,
                node: node?,
                datacenter: datacenter?,
                ca: ca?,
                cert: cert?,
                key: key?,
                user: user?,
                password_file: password_file?,
                dial_timeout: dial_timeout?,
                lease: lease?,
                config: config?,
            })
        })
    }

    fn etcd_endpoints(&mut self, f: &Field<'_, '_>) -> Option<Vec<String>> {
        let items = self.array(
            f,
            "expected a list of etcd client URLs, like [\"http://10.0.0.1:2379\"]",
        )?;
        if items.is_empty() {
            self.bad(
                f,
                "at least one etcd endpoint is needed (or remove [cluster] to run alone)",
            );
            return None;
        }
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            let url = c.parsed(item, |s| {
                let url = parse_url(s)?;
                if url.path != "/" {
                    return Err(
                        "an etcd endpoint is a scheme, host and port only (no path)".to_owned()
                    );
                }
                Ok(format!(
                    "{}://{}",
                    if url.tls { "https" } else { "http" },
                    url.target
                ))
            })?;
            if let Some(first) = first_seen(&mut seen, url.clone(), &item.path) {
                c.bad(item, format!("listed twice (also {first})"));
                return None;
            }
            Some(url)
        })
    }
}

/// One key of a pair without the other (a half-set credential): said at
/// the one present, naming the one missing.
fn half_pair(c: &mut Ctx, t: &Tbl<'_, '_>, a: &'static str, b: &'static str, what: &str) {
    let (missing, f) = match (t.field(a), t.field(b)) {
        (Some(f), None) => (b, f),
        (None, Some(f)) => (a, f),
        _ => return,
    };
    c.bad(&f, format!("{what} needs both {a} and {b}: add {missing}"));
}

/// Every key geolb reads or writes starts with it; ending in '/' keeps
/// `/geolb/` from also matching `/geolb-test/`.
fn key_prefix(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || !s.ends_with('/') || s.len() < 2 {
        return Err(
            "expected a key prefix starting and ending with '/', like \"/geolb/\"".to_owned(),
        );
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("a key prefix has no spaces or control characters".to_owned());
    }
    Ok(s.to_owned())
}
