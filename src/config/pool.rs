//! `[[pool]]`: backends, balancing, checks and the way to the backends.

use std::collections::HashMap;

use toml::de::DeValue;

use super::model::*;
use super::values::{hash_key, host_name, parse_socket};
use super::walk::{Ctx, Field, Tbl, first_seen};

impl Ctx {
    /// `clustered`: the file has a `[cluster]` table, which `discovery`
    /// needs.
    pub(super) fn pools(
        &mut self,
        f: &Field<'_, '_>,
        names: &mut Vec<String>,
        clustered: bool,
    ) -> Vec<PoolConfig> {
        self.named_tables(f, "pool", names, |c, t, name| c.pool(t, name, clustered))
    }

    fn pool(
        &mut self,
        t: &Tbl<'_, '_>,
        name: Option<String>,
        clustered: bool,
    ) -> Option<PoolConfig> {
        let discovery = self.maybe(t, "discovery", |c, f| c.discovery(f, clustered));
        let discovers = t.field("discovery").is_some();
        let balance = self.opt(t, "balance", Balance::RoundRobin, |c, f| {
            c.choice(f, Balance::SPELLINGS)
        });
        let hash = self.opt(t, "hash", HashKey::ClientIp, |c, f| c.parsed(f, hash_key));
        let count = t
            .map
            .get("backends")
            .and_then(|b| b.get_ref().as_array())
            .map_or(0, |a| a.len());
        let min_healthy = self.opt(t, "min_healthy", 1, |c, f| {
            let n = c.int(f, 0, i64::MAX)? as usize;
            // With no backends at all, `backends` already carries the error;
            // a pool with discovery may have more than it lists.
            if count > 0 && !discovers && n > count {
                c.bad(
                    f,
                    format!("the pool has only {count} backend(s): at most {count}"),
                );
                return None;
            }
            Some(n)
        });
        let check = self.maybe(t, "check", Ctx::pool_check);
        // With discovery, static backends are optional: they may all come
        // from etcd.
        let backends = match discovers {
            true => self.opt(t, "backends", Vec::new(), |c, f| c.backends(f, true)),
            false => self.req(t, "backends", "[{ addr = \"127.0.0.1:8080\" }]", |c, f| {
                c.backends(f, false)
            }),
        };
        let proxy_protocol = self.maybe(t, "proxy_protocol", |c, f| {
            c.choice(f, ProxyProtocolVersion::SPELLINGS)
        });
        let backend_protocol = self.opt(t, "backend_protocol", BackendProtocol::Http1, |c, f| {
            c.choice(f, BackendProtocol::SPELLINGS)
        });
        let http1_client = self.opt(t, "http1_client", Http1Client::Geolb, |c, f| {
            c.choice(f, Http1Client::SPELLINGS)
        });
        let tls = self.opt(t, "tls", None, Ctx::backend_tls);
        let limits = self.backend_limits(t);
        let outlier = self.opt(t, "outlier", OutlierConfig::default(), Ctx::outlier);
        let retry_budget = self.opt(
            t,
            "retry_budget",
            RetryBudgetConfig::default(),
            Ctx::retry_budget,
        );
        let sticky = self.maybe(t, "sticky", Ctx::sticky);
        if let (Some(protocol), Some(tls), Some(f)) =
            (backend_protocol, &tls, t.field("backend_protocol"))
        {
            match (protocol, tls) {
                (BackendProtocol::H2c, Some(_)) => self.bad(
                    &f,
                    "h2c is HTTP/2 in cleartext, but this pool has tls: use \"h2\" for HTTP/2 over TLS",
                ),
                (BackendProtocol::H2, None) => self.bad(
                    &f,
                    "h2 is HTTP/2 over TLS: add tls = true, or use \"h2c\" for cleartext",
                ),
                _ => {}
            }
        }
        Some(PoolConfig {
            name: name?,
            balance: balance?,
            hash: hash?,
            min_healthy: min_healthy?,
            check: check?,
            backends: backends?,
            proxy_protocol: proxy_protocol?,
            backend_protocol: backend_protocol?,
            http1_client: http1_client?,
            tls: tls?,
            limits: limits?,
            outlier: outlier?,
            retry_budget: retry_budget?,
            sticky: sticky?,
            discovery: discovery?,
        })
    }

    /// `discovery = { prefix = "pools/web/" }`.
    fn discovery(&mut self, f: &Field<'_, '_>, clustered: bool) -> Option<DiscoveryConfig> {
        if !clustered {
            self.bad(
                f,
                "discovery reads backends from etcd: add a [cluster] table (or remove discovery)",
            );
        }
        let expected = "expected a table like { prefix = \"pools/web/\" }";
        self.table(f, expected, |c, t| {
            let prefix = c.req(t, "prefix", "\"pools/web/\"", |c, f| {
                c.parsed(f, discovery_prefix)
            });
            Some(DiscoveryConfig { prefix: prefix? }).filter(|_| clustered)
        })
    }

    /// A pool's `tls`: `true`/`false`, or a table of settings (which means
    /// TLS on).
    fn backend_tls(&mut self, f: &Field<'_, '_>) -> Option<Option<BackendTls>> {
        if let DeValue::Boolean(on) = f.get() {
            return Some(on.then_some(BackendTls {
                ca: None,
                verify: true,
                sni: None,
            }));
        }
        let expected = "expected true, false or a table like \
                        { ca = \"certs/ca.pem\", sni = \"origin.internal\" }";
        self.table(f, expected, |c, t| {
            let ca = c.maybe(t, "ca", Ctx::path);
            let verify = c.opt(t, "verify", true, Ctx::bool);
            let sni = c.maybe(t, "sni", |c, f| c.parsed(f, host_name));
            Some(Some(BackendTls {
                ca: ca?,
                verify: verify?,
                sni: sni?,
            }))
        })
    }

    /// `may_be_empty`: the pool has discovery.
    fn backends(&mut self, f: &Field<'_, '_>, may_be_empty: bool) -> Option<Vec<BackendConfig>> {
        let example = "[{ addr = \"127.0.0.1:8080\" }]";
        let items = self.array(f, &format!("expected a list of backends like {example}"))?;
        if items.is_empty() && !may_be_empty {
            self.bad(
                f,
                format!("a pool needs at least one backend, like {example}"),
            );
            return None;
        }
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            c.table(
                item,
                "expected a table like { addr = \"127.0.0.1:8080\", weight = 1 }",
                |c, t| {
                    let addr = c.req(t, "addr", "\"127.0.0.1:8080\"", |c, f| {
                        let addr = c.parsed(f, |s| parse_socket(s, false))?;
                        if let Some(first) = first_seen(&mut seen, addr, &f.path) {
                            c.bad(f, format!("duplicate backend: {first} is the same address"));
                        }
                        Some(addr)
                    });
                    let weight = c.opt(t, "weight", 1, |c, f| c.uint(f, 1, 1_000_000));
                    let drain = c.opt(t, "drain", false, Ctx::bool);
                    Some(BackendConfig {
                        addr: addr?,
                        weight: weight?,
                        drain: drain?,
                    })
                },
            )
        })
    }
}

/// A discovery prefix: relative to `[cluster] prefix`, ending in '/' (so
/// that `pools/web/` does not also match `pools/web2/`), and clear of the
/// keys geolb itself keeps there.
fn discovery_prefix(s: &str) -> Result<String, String> {
    if s.starts_with('/') || !s.ends_with('/') || s.len() < 2 {
        return Err(
            "expected a key prefix relative to [cluster] prefix, ending in '/', like \"pools/web/\""
                .to_owned(),
        );
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("a key prefix has no spaces or control characters".to_owned());
    }
    if let Some(own) = ["overrides/", "health/"]
        .iter()
        .find(|own| s.starts_with(*own))
    {
        return Err(format!(
            "geolb keeps its own keys under {own}: choose another prefix, like \"pools/web/\""
        ));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::tests::{errors, parse};
    use super::*;

    const CLUSTER: &str = "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode = \"a\"\n";

    #[test]
    fn discovery_takes_a_relative_prefix_and_needs_no_static_backend() {
        let text = format!(
            "{CLUSTER}[[pool]]\nname = \"web\"\nmin_healthy = 3\ndiscovery = {{ prefix = \"pools/web/\" }}\n\
             [[pool]]\nname = \"mixed\"\nbackends = []\ndiscovery = {{ prefix = \"pools/web/\" }}\n"
        );
        let config = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let web = &config.pools[0];
        assert_eq!(web.discovery.as_ref().unwrap().prefix, "pools/web/");
        assert!(web.backends.is_empty());
        assert_eq!(
            web.min_healthy, 3,
            "registered backends may make up the count"
        );
        assert!(config.pools[1].backends.is_empty());
    }

    #[test]
    fn discovery_errors_name_their_keys() {
        let pool = |discovery: &str| format!("[[pool]]\nname = \"web\"\ndiscovery = {discovery}\n");
        let said =
            |text: &str| -> Vec<String> { errors(text).iter().map(|e| e.to_string()).collect() };
        let alone = said(&pool("{ prefix = \"pools/web/\" }"));
        assert!(
            alone
                .iter()
                .any(|e| e.starts_with("line 3: pool[0].discovery")
                    && e.contains("add a [cluster] table")),
            "{alone:?}"
        );
        for (prefix, says) in [
            ("\"/pools/web/\"", "relative to [cluster] prefix"),
            ("\"pools/web\"", "ending in '/'"),
            ("\"pools/w eb/\"", "no spaces"),
            ("\"overrides/x/\"", "geolb keeps its own keys"),
            ("\"health/\"", "geolb keeps its own keys"),
        ] {
            let text = format!("{CLUSTER}{}", pool(&format!("{{ prefix = {prefix} }}")));
            let shown = said(&text);
            assert!(
                shown
                    .iter()
                    .any(|e| e.starts_with("line 6: pool[0].discovery.prefix") && e.contains(says)),
                "{prefix}: {shown:?}"
            );
        }
        let missing = said(&format!("{CLUSTER}{}", pool("{ }")));
        assert!(
            missing
                .iter()
                .any(|e| e.contains("pool[0].discovery.prefix") && e.contains("required")),
            "{missing:?}"
        );
        let without = said(&format!(
            "{CLUSTER}[[pool]]\nname = \"web\"\nbackends = []\n"
        ));
        assert!(
            without
                .iter()
                .any(|e| e.contains("pool[0].backends") && e.contains("at least one")),
            "{without:?}"
        );
    }

    #[test]
    fn backend_tls_and_protocol() {
        let pools = |extra: &str| {
            let text = format!(
                "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"127.0.0.1:8443\" }}]\n{extra}"
            );
            let config = parse(&text).unwrap_or_else(|e| panic!("{e}"));
            let pool = &config.pools[0];
            (pool.backend_protocol, pool.tls.clone())
        };
        assert_eq!(pools(""), (BackendProtocol::Http1, None));
        assert_eq!(pools("tls = false"), (BackendProtocol::Http1, None));
        assert_eq!(
            pools("backend_protocol = \"h2c\""),
            (BackendProtocol::H2c, None)
        );
        let on = BackendTls {
            ca: None,
            verify: true,
            sni: None,
        };
        assert_eq!(pools("tls = true"), (BackendProtocol::Http1, Some(on)));
        assert_eq!(
            pools(
                "backend_protocol = \"h2\"\ntls = { ca = \"ca.pem\", verify = false, sni = \"origin.internal\" }"
            ),
            (
                BackendProtocol::H2,
                Some(BackendTls {
                    ca: Some(PathBuf::from("/etc/geolb/ca.pem")),
                    verify: false,
                    sni: Some("origin.internal".into()),
                })
            )
        );
    }
}
