//! `[[listener]]`: what is listened on, with which protocol, and which
//! pool each request goes to.

use toml::de::DeValue;

use super::model::*;
use super::values::{host_name, path_prefix};
use super::walk::{Ctx, Field, Tbl};

impl Ctx {
    pub(super) fn listeners(
        &mut self,
        f: &Field<'_, '_>,
        pools: &[PoolConfig],
        pool_names: &[String],
    ) -> Vec<ListenerConfig> {
        let mut names = Vec::new();
        self.named_tables(f, "listener", &mut names, |c, t, name| {
            c.listener(t, name, pools, pool_names)
        })
    }

    fn listener(
        &mut self,
        t: &Tbl<'_, '_>,
        name: Option<String>,
        pools: &[PoolConfig],
        pool_names: &[String],
    ) -> Option<ListenerConfig> {
        let bind = self.req(t, "bind", "\"127.0.0.1:8080\"", Ctx::bind);
        let protocol = self.opt(t, "protocol", Protocol::Http, |c, f| {
            c.choice(f, Protocol::SPELLINGS)
        });
        let pool = self.req(t, "pool", "\"web\"", |c, f| {
            c.reference(f, "pool", pool_names)
        });
        let routes = self.opt(t, "routes", Vec::new(), |c, f| c.routes(f, pool_names));
        let timeouts = self.opt(t, "timeouts", Timeouts::default(), Ctx::timeouts);
        let retries = self.opt(t, "retries", 2, |c, f| c.uint(f, 0, 100));
        let tcp = protocol == Some(Protocol::Tcp);
        let retry_on = self.opt(t, "retry_on", RetryOn::default(), |c, f| c.retry_on(f, tcp));
        let tls = self.maybe(t, "tls", Ctx::listener_tls);
        let accept_proxy_protocol = self.opt(t, "accept_proxy_protocol", false, Ctx::bool);
        let access_log = self.opt(t, "access_log", false, Ctx::bool);
        let splice = self.opt(t, "splice", true, Ctx::bool);
        let max_connections = self.maybe(t, "max_connections", |c, f| c.uint(f, 1, 1_000_000));
        let client_limits = self.maybe(t, "client_limits", Ctx::client_limits);
        let max_concurrent_streams = self.opt(
            t,
            "max_concurrent_streams",
            DEFAULT_MAX_CONCURRENT_STREAMS,
            |c, f| c.uint(f, 1, 10_000),
        );
        let http1_server = self.opt(t, "http1_server", Http1Server::default(), |c, f| {
            c.choice(f, Http1Server::SPELLINGS)
        });
        let headers = self.listener_headers(t, protocol);
        let client_auth = self.maybe(t, "client_auth", |c, f| c.client_auth(f, protocol));
        let compress = self.opt(t, "compress", None, Ctx::compress);
        let rules = self.request_rules(t, tcp);
        let error_pages = self.opt(t, "error_pages", Vec::new(), |c, f| c.error_pages(f, tcp));
        let protocol = protocol?;
        let (tls, acme) = tls?.unwrap_or_default();
        if acme.is_some()
            && let Some(f) = t.field("client_auth")
        {
            // An ACME listener's server config is built by the ACME
            // resolver, which asks for no client certificates.
            self.bad(
                &f,
                "client_auth needs certificate files in tls: ACME listeners do not ask for client certificates",
            );
            return None;
        }
        if !self.protocol_rules(t, protocol, pools) {
            return None;
        }
        Some(ListenerConfig {
            name: name?,
            bind: bind?,
            protocol,
            pool: pool?,
            routes: routes?,
            timeouts: timeouts?,
            retries: retries?,
            retry_on: retry_on?,
            tls,
            acme,
            accept_proxy_protocol: accept_proxy_protocol?,
            access_log: access_log?,
            splice: splice?,
            max_connections: max_connections?,
            client_limits: client_limits?,
            max_concurrent_streams: max_concurrent_streams?,
            http1_server: http1_server?,
            headers: headers?,
            client_auth: client_auth?,
            compress: compress?,
            rules: rules?,
            error_pages: error_pages?,
        })
    }

    fn client_limits(&mut self, f: &Field<'_, '_>) -> Option<ClientLimits> {
        let example = "{ max_connections = 100, requests_per_second = 50 }";
        self.table(f, &format!("expected a table like {example}"), |c, t| {
            let max_connections = c.maybe(t, "max_connections", |c, f| c.uint(f, 1, 1_000_000));
            let rate = c.maybe(t, "requests_per_second", |c, f| c.uint(f, 1, 1_000_000));
            let burst = c.maybe(t, "burst", |c, f| c.uint(f, 1, 1_000_000));
            let ipv4_prefix = c.opt(t, "ipv4_prefix", 24, |c, f| c.uint(f, 0, 32));
            let ipv6_prefix = c.opt(t, "ipv6_prefix", 56, |c, f| c.uint(f, 0, 128));
            if t.field("max_connections").is_none() && t.field("requests_per_second").is_none() {
                let why = format!(
                    "client_limits limits nothing without max_connections or \
                     requests_per_second: add one, e.g. {example}, or remove the table"
                );
                c.err(t.path.clone(), t.offset, why);
                return None;
            }
            if let Some(f) = t.field("burst")
                && t.field("requests_per_second").is_none()
            {
                c.bad(
                    &f,
                    "burst sizes the requests_per_second bucket: set requests_per_second too",
                );
                return None;
            }
            let rate = rate?;
            Some(ClientLimits {
                max_connections: max_connections?,
                requests_per_second: rate,
                burst: burst?.or(rate).unwrap_or(0),
                ipv4_prefix: ipv4_prefix? as u8,
                ipv6_prefix: ipv6_prefix? as u8,
            })
        })
    }

    /// What a listener's protocol requires of its other keys; false if broken.
    fn protocol_rules(
        &mut self,
        t: &Tbl<'_, '_>,
        protocol: Protocol,
        pools: &[PoolConfig],
    ) -> bool {
        let before = self.error_count();
        let tls = t.field("tls");
        match (protocol, &tls) {
            (Protocol::Https, None) => {
                self.missing(t, "tls", "[{ cert = \"cert.pem\", key = \"key.pem\" }]");
            }
            (Protocol::Https, Some(f)) => {
                if f.get().as_array().is_some_and(|a| a.is_empty()) {
                    self.bad(f, "an https listener needs at least one certificate");
                }
            }
            (_, Some(f)) => {
                self.bad(
                    f,
                    "only https listeners use certificates: set protocol = \"https\" or remove tls",
                );
            }
            (_, None) => {}
        }
        if protocol == Protocol::Tcp {
            if let Some(f) = t.field("routes")
                && f.get().as_array().is_some_and(|a| !a.is_empty())
            {
                let why = "routes choose a pool by HTTP host and path, \
                           which a tcp listener never sees: remove them";
                self.bad(&f, why);
            }
            if let Some(f) = t.field("pool")
                && let Some(name) = f.get().as_str()
                && let Some(pool) = pools.iter().find(|p| p.name == name)
                && (pool.tls.is_some()
                    || pool.backend_protocol != BackendProtocol::Http1
                    || pool.sticky.is_some())
            {
                self.bad(
                    &f,
                    format!(
                        "pool \"{name}\" sets tls, backend_protocol or sticky, which only http and https \
                         listeners use: a tcp listener copies bytes as they come"
                    ),
                );
            }
            let why = "a tcp listener copies bytes as they come: compress is for http and https";
            self.misplaced(t, &["compress"], why);
            if let Some(f) = t.field("max_concurrent_streams") {
                self.bad(
                    &f,
                    "a tcp listener speaks no HTTP/2: remove max_concurrent_streams",
                );
            }
            if let Some(f) = t.field("http1_server") {
                self.bad(&f, "a tcp listener speaks no HTTP: remove http1_server");
            }
            if let Some(limits) = t.field("client_limits")
                && let DeValue::Table(map) = limits.get()
                && let Some(value) = map.get("requests_per_second")
            {
                let f = Field {
                    path: format!("{}.requests_per_second", limits.path),
                    value,
                };
                self.bad(
                    &f,
                    "a tcp listener sees no requests: use max_connections to limit its clients",
                );
            }
            return self.error_count() == before;
        }
        if protocol == Protocol::Https {
            let why = "splice moves plain bytes between sockets, and an https listener \
                       encrypts what it sends: remove it";
            self.misplaced(t, &["splice"], why);
        }
        // A PROXY header names one client, but HTTP backend connections are
        // pooled and reused for requests of many clients.
        let mut refs: Vec<Field<'_, '_>> = t.field("pool").into_iter().collect();
        if let Some(routes) = t.field("routes")
            && let DeValue::Array(items) = routes.get()
        {
            for (i, item) in items.iter().enumerate() {
                if let Some(value) = item.get_ref().as_table().and_then(|r| r.get("pool")) {
                    refs.push(Field {
                        path: format!("{}[{i}].pool", routes.path),
                        value,
                    });
                }
            }
        }
        for f in &refs {
            let Some(name) = f.get().as_str() else {
                continue;
            };
            if let Some(version) = pools
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.proxy_protocol)
            {
                let version = version.as_str();
                self.bad(
                    f,
                    format!(
                        "pool \"{name}\" has proxy_protocol = \"{version}\", which only tcp listeners \
                         can send: HTTP connections to backends carry requests of many clients"
                    ),
                );
            }
        }
        self.error_count() == before
    }

    fn routes(&mut self, f: &Field<'_, '_>, pool_names: &[String]) -> Option<Vec<RouteConfig>> {
        let example = "{ host = \"us.mysite.com\", pool = \"web-us\" }";
        let items = self.array(f, &format!("expected a list like [{example}]"))?;
        self.each(&items, |c, item| {
            c.table(item, &format!("expected a table like {example}"), |c, t| {
                let host = c.maybe(t, "host", |c, f| c.parsed(f, host_name));
                let path_prefix = c.maybe(t, "path_prefix", |c, f| c.parsed(f, path_prefix));
                let pool = c.req(t, "pool", "\"web\"", |c, f| {
                    c.reference(f, "pool", pool_names)
                });
                let headers = c.header_rule_set(t);
                let compress = c.maybe(t, "compress", Ctx::compress);
                let rules = c.request_rules(t, false);
                let rewrite = c.path_rewrite(t);
                if t.field("host").is_none() && t.field("path_prefix").is_none() {
                    let why = "a route needs host, path_prefix or both \
                               (requests matching no route go to the listener's pool)";
                    c.err(t.path.clone(), t.offset, why.to_owned());
                    return None;
                }
                Some(RouteConfig {
                    host: host?,
                    path_prefix: path_prefix?,
                    pool: pool?,
                    headers: headers?,
                    compress: compress?,
                    rules: rules?,
                    rewrite: rewrite?,
                })
            })
        })
    }

    fn timeouts(&mut self, f: &Field<'_, '_>) -> Option<Timeouts> {
        self.table(
            f,
            "expected a table like { connect = \"5s\", idle = \"60s\" }",
            |c, t| {
                let d = Timeouts::default();
                let connect = c.opt(t, "connect", d.connect, |c, f| c.duration(f, false));
                let header = c.opt(t, "header", d.header, |c, f| c.duration(f, false));
                let request = c.opt(t, "request", d.request, |c, f| c.duration(f, false));
                let idle = c.opt(t, "idle", d.idle, |c, f| c.duration(f, false));
                Some(Timeouts {
                    connect: connect?,
                    header: header?,
                    request: request?,
                    idle: idle?,
                })
            },
        )
    }

    pub(super) fn tls(&mut self, f: &Field<'_, '_>) -> Option<Vec<TlsCertConfig>> {
        let example = "{ cert = \"cert.pem\", key = \"key.pem\" }";
        let items = self.array(f, &format!("expected a list like [{example}]"))?;
        self.each(&items, |c, item| {
            c.table(item, &format!("expected a table like {example}"), |c, t| {
                let cert = c.req(t, "cert", "\"cert.pem\"", Ctx::path);
                let key = c.req(t, "key", "\"key.pem\"", Ctx::path);
                let ocsp = c.ocsp(t);
                Some(TlsCertConfig {
                    cert: cert?,
                    key: key?,
                    ocsp: ocsp?,
                })
            })
        })
    }
}
