//! `[[pool]]`: backends, balancing, checks and the way to the backends.

use std::collections::HashMap;

use toml::de::DeValue;

use super::model::*;
use super::values::{hash_key, host_name, parse_socket};
use super::walk::{Ctx, Field, Tbl, first_seen};

impl Ctx {
    pub(super) fn pools(&mut self, f: &Field<'_, '_>, names: &mut Vec<String>) -> Vec<PoolConfig> {
        self.named_tables(f, "pool", names, Ctx::pool)
    }

    fn pool(&mut self, t: &Tbl<'_, '_>, name: Option<String>) -> Option<PoolConfig> {
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
            // With no backends at all, `backends` already carries the error.
            if count > 0 && n > count {
                c.bad(
                    f,
                    format!("the pool has only {count} backend(s): at most {count}"),
                );
                return None;
            }
            Some(n)
        });
        let check = self.maybe(t, "check", Ctx::pool_check);
        let backends = self.req(
            t,
            "backends",
            "[{ addr = \"127.0.0.1:8080\" }]",
            Ctx::backends,
        );
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

    fn backends(&mut self, f: &Field<'_, '_>) -> Option<Vec<BackendConfig>> {
        let example = "[{ addr = \"127.0.0.1:8080\" }]";
        let items = self.array(f, &format!("expected a list of backends like {example}"))?;
        if items.is_empty() {
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::tests::parse;
    use super::*;

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
