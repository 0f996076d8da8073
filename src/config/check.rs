//! Health checks: a pool's `check` and a data center's remote `check`.

use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;

use super::model::*;
use super::values::{host_name, http_path, parse_socket, parse_url};
use super::walk::{Ctx, Field, Tbl};

#[derive(Clone, Copy, PartialEq)]
enum CheckKind {
    Http,
    Https,
    Tcp,
}

const CHECK_KINDS: &[(&str, CheckKind)] = &[
    ("http", CheckKind::Http),
    ("https", CheckKind::Https),
    ("tcp", CheckKind::Tcp),
];

/// The probe-independent part of a check.
struct Timing {
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
}

impl Timing {
    fn with(self, probe: Probe) -> CheckConfig {
        CheckConfig {
            probe,
            interval: self.interval,
            timeout: self.timeout,
            rise: self.rise,
            fall: self.fall,
        }
    }
}

/// What every kind of check shares, each `None` when bad.
struct Shared {
    expect: Option<Vec<u16>>,
    timing: Option<Timing>,
    ca: Option<Option<PathBuf>>,
    verify: Option<bool>,
}

impl Ctx {
    /// Reads the keys every check shares, after the kind's own keys so that
    /// "accepted here" lists them last. `None` when `kind` is bad, or when
    /// ca or verify are set on a check that is not https (reported).
    fn shared_keys(
        &mut self,
        t: &Tbl<'_, '_>,
        kind: Option<CheckKind>,
    ) -> Option<(CheckKind, Shared)> {
        let shared = Shared {
            expect: self.opt(t, "expect", vec![200], Ctx::expect),
            timing: self.timing(t),
            ca: self.maybe(t, "ca", Ctx::path),
            verify: self.opt(t, "verify", true, Ctx::bool),
        };
        let kind = kind?;
        if kind != CheckKind::Https
            && self.misplaced(t, &["ca", "verify"], "ca and verify are for https checks")
        {
            return None;
        }
        Some((kind, shared))
    }

    fn timing(&mut self, t: &Tbl<'_, '_>) -> Option<Timing> {
        let interval = self.opt(t, "interval", Duration::from_secs(2), |c, f| {
            c.duration(f, false)
        });
        let timeout = self.opt(t, "timeout", Duration::from_secs(1), |c, f| {
            c.duration(f, false)
        });
        let rise = self.opt(t, "rise", 2, |c, f| c.uint(f, 1, 1000));
        let fall = self.opt(t, "fall", 3, |c, f| c.uint(f, 1, 1000));
        Some(Timing {
            interval: interval?,
            timeout: timeout?,
            rise: rise?,
            fall: fall?,
        })
    }

    fn expect(&mut self, f: &Field<'_, '_>) -> Option<Vec<u16>> {
        let status = |c: &mut Self, f: &Field<'_, '_>| c.int(f, 100, 599).map(|n| n as u16);
        match f.get() {
            DeValue::Array(items) if items.is_empty() => {
                self.bad(f, "list at least one status code, like [200, 204]");
                None
            }
            DeValue::Array(_) => {
                let items = self.array(f, "expected a status code or a list of them")?;
                self.each(&items, status)
            }
            _ => status(self, f).map(|n| vec![n]),
        }
    }

    pub(super) fn pool_check(&mut self, f: &Field<'_, '_>) -> Option<CheckConfig> {
        self.table(
            f,
            "expected a table like { kind = \"http\", path = \"/health\" }",
            |c, t| {
                let kind = c.req(t, "kind", "\"http\"", |c, f| c.choice(f, CHECK_KINDS));
                let path = c.opt(t, "path", "/".to_owned(), |c, f| c.parsed(f, http_path));
                let host = c.maybe(t, "host", |c, f| c.parsed(f, host_name));
                let (kind, shared) = c.shared_keys(t, kind)?;
                let probe = match kind {
                    CheckKind::Tcp => {
                        let why = "a tcp check only connects: \
                           path, host and expect are for http and https checks";
                        if c.misplaced(t, &["path", "host", "expect"], why) {
                            return None;
                        }
                        Probe::Tcp
                    }
                    kind => Probe::Http(HttpProbe {
                        tls: kind == CheckKind::Https,
                        path: path?,
                        host: host?,
                        expect: shared.expect?,
                        ca: shared.ca?,
                        verify: shared.verify?,
                    }),
                };
                Some(shared.timing?.with(probe))
            },
        )
    }

    pub(super) fn remote_check(&mut self, f: &Field<'_, '_>) -> Option<RemoteCheck> {
        let expected = "expected a table like \
                        { kind = \"http\", url = \"http://192.0.2.1:9100/datacenters/eu-west\" }";
        self.table(f, expected, Ctx::remote_check_fields)
    }

    fn remote_check_fields(&mut self, t: &Tbl<'_, '_>) -> Option<RemoteCheck> {
        let kind = self.req(t, "kind", "\"http\"", |c, f| c.choice(f, CHECK_KINDS));
        let url = self.maybe(t, "url", |c, f| c.parsed(f, parse_url));
        let addr = self.maybe(t, "addr", |c, f| c.parsed(f, |s| parse_socket(s, false)));
        let (kind, shared) = self.shared_keys(t, kind)?;
        let (target, probe) = match kind {
            CheckKind::Tcp => {
                let why =
                    "a tcp check connects to addr: url and expect are for http and https checks";
                let misplaced = self.misplaced(t, &["url", "expect"], why);
                let Some(addr) = addr? else {
                    self.missing(t, "addr", "\"192.0.2.1:443\"");
                    return None;
                };
                if misplaced {
                    return None;
                }
                (addr.to_string(), Probe::Tcp)
            }
            kind => {
                let tls = kind == CheckKind::Https;
                let why = "an http or https check fetches url: addr is for tcp checks \
                           (put the address in the url, like \"http://192.0.2.1:9100/\")";
                let misplaced = self.misplaced(t, &["addr"], why);
                let Some(url) = url? else {
                    self.missing(t, "url", "\"http://192.0.2.1:9100/datacenters/eu-west\"");
                    return None;
                };
                if url.tls != tls {
                    if let Some(f) = t.field("url") {
                        let scheme = if tls { "https" } else { "http" };
                        self.bad(&f, format!("the url's scheme must match kind: {scheme}://"));
                    }
                    return None;
                }
                if misplaced {
                    return None;
                }
                let probe = HttpProbe {
                    tls,
                    path: url.path,
                    host: Some(url.host),
                    expect: shared.expect?,
                    ca: shared.ca?,
                    verify: shared.verify?,
                };
                (url.target, Probe::Http(probe))
            }
        };
        Some(RemoteCheck {
            target,
            check: shared.timing?.with(probe),
        })
    }
}
