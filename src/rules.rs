//! The L7 rules of listeners and routes, compiled for the data path:
//! redirects, client networks, methods, the body limit, the path
//! rewrite, and the `error_pages` bodies read from their files.
//!
//! A route without any rule has no [`Rules`] at all (`None`), so an
//! unconfigured listener pays one branch per request. The proxy asks
//! [`Rules::check`] what to do and builds the answer itself.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri};

use crate::config::{
    Cidr, Config, ConfigError, ErrorPageConfig, ErrorStatus, MAX_ERROR_PAGE, PathRewrite,
    RedirectTarget, RequestRules, RouteConfig,
};

/// A route's rules: the listener's, each one its route sets replaced.
#[derive(Debug)]
pub struct Rules {
    redirect: Option<Redirect>,
    max_body: Option<u64>,
    methods: Option<Methods>,
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    rewrite: Option<Rewrite>,
}

#[derive(Debug)]
struct Redirect {
    status: StatusCode,
    to: RedirectTarget,
}

#[derive(Debug)]
struct Methods {
    list: Vec<Method>,
    /// The 405's `Allow`.
    allow: HeaderValue,
}

#[derive(Debug)]
struct Rewrite {
    prefix: String,
    with: String,
}

/// Why a request is answered by geolb rather than forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Redirect {
        status: StatusCode,
        location: HeaderValue,
    },
    /// `deny`, or not in `allow`: 403.
    Forbidden,
    /// Not in `methods`: 405 with this `Allow`.
    Method(HeaderValue),
    /// `Content-Length` over `max_body`: 413.
    TooLarge(u64),
    /// A redirect that needs the request's host, for a request without
    /// one (HTTP/1.0): 400.
    NoHost,
    /// The rewritten path has a dot segment: 400, as the proxy refuses
    /// any such path.
    DotSegment,
}

impl Rules {
    /// What requests of a listener with `rules` (and of `route`, if the
    /// request took one) must pass; None when nothing.
    pub fn compile(rules: &RequestRules, route: Option<&RouteConfig>) -> Option<Box<Rules>> {
        let merged;
        let rules = match route {
            Some(r) => {
                merged = rules.overridden_by(&r.rules);
                &merged
            }
            None => rules,
        };
        let rewrite = route.and_then(|r| {
            let prefix = r.path_prefix.clone()?;
            let with = match &r.rewrite {
                PathRewrite::Keep => return None,
                PathRewrite::Strip => "/".to_owned(),
                PathRewrite::Replace(with) => with.clone(),
            };
            Some(Rewrite { prefix, with })
        });
        if rules.is_empty() && rewrite.is_none() {
            return None;
        }
        let methods = rules.methods.as_ref().map(|names| Methods {
            list: names
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            allow: HeaderValue::from_str(&names.join(", "))
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        });
        Some(Box::new(Rules {
            redirect: rules.redirect.as_ref().map(|r| Redirect {
                status: StatusCode::from_u16(r.code).unwrap_or(StatusCode::PERMANENT_REDIRECT),
                to: r.to.clone(),
            }),
            max_body: rules.max_body,
            methods,
            allow: rules.allow.clone().unwrap_or_default(),
            deny: rules.deny.clone().unwrap_or_default(),
            rewrite,
        }))
    }

    /// What to answer instead of forwarding, in this order: a redirect,
    /// then the client's network, the method, the declared body length.
    /// `host`: the request's validated authority; `client`: its address.
    pub fn check(
        &self,
        method: &Method,
        uri: &Uri,
        content_length: Option<&HeaderValue>,
        host: Option<&HeaderValue>,
        client: IpAddr,
    ) -> Result<(), Verdict> {
        if let Some(r) = &self.redirect {
            return Err(match location(&r.to, host, uri) {
                Some(location) => Verdict::Redirect {
                    status: r.status,
                    location,
                },
                None => Verdict::NoHost,
            });
        }
        if !self.deny.is_empty() || !self.allow.is_empty() {
            let client = client.to_canonical();
            let listed = |nets: &[Cidr]| nets.iter().any(|n| n.contains(client));
            if listed(&self.deny) || (!self.allow.is_empty() && !listed(&self.allow)) {
                return Err(Verdict::Forbidden);
            }
        }
        if let Some(m) = &self.methods
            && !m.list.contains(method)
        {
            return Err(Verdict::Method(m.allow.clone()));
        }
        if let (Some(max), Some(length)) = (self.max_body, content_length)
            && let Some(length) = std::str::from_utf8(length.as_bytes())
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            && length > max
        {
            return Err(Verdict::TooLarge(max));
        }
        Ok(())
    }

    /// The most body bytes a request may send (checked as they stream).
    pub fn max_body(&self) -> Option<u64> {
        self.max_body
    }

    /// `uri` (as routed) with the route's prefix rewritten, its scheme,
    /// authority and query kept; None when the route keeps paths.
    pub fn rewrite(&self, uri: &Uri) -> Option<Uri> {
        let r = self.rewrite.as_ref()?;
        let rest = uri.path().strip_prefix(r.prefix.as_str())?;
        let mut path = join(&r.with, rest);
        if let Some(q) = uri.query() {
            path.push('?');
            path.push_str(q);
        }
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(path)).ok()?);
        Uri::from_parts(parts).ok()
    }
}

/// `base` followed by `rest` with exactly one `/` between them where
/// either has one or `rest` is not empty: `("/v2", "/users")` and
/// `("/v2/", "users")` give `/v2/users`; `("/", "")` gives `/`.
fn join(base: &str, rest: &str) -> String {
    let mut out = String::with_capacity(base.len() + rest.len() + 1);
    out.push_str(base);
    match (base.ends_with('/'), rest.strip_prefix('/')) {
        (true, Some(tail)) => out.push_str(tail),
        (false, None) if !rest.is_empty() => {
            out.push('/');
            out.push_str(rest);
        }
        _ => out.push_str(rest),
    }
    out
}

/// The host of a validated authority, without its port.
fn host_only(authority: &str) -> &str {
    match authority.strip_prefix('[') {
        Some(_) => authority.split_inclusive(']').next().unwrap_or(authority),
        None => authority.split(':').next().unwrap_or(authority),
    }
}

/// The `Location` of a redirect to `to` for a request to `uri` at `host`.
/// None when it needs the host and the request has none. The host has
/// passed `validate::authority` (host characters and a port only) and the
/// path and query are `Uri`'s (no control characters), so nothing a client
/// sends can end the header or name another host than its own.
fn location(to: &RedirectTarget, host: Option<&HeaderValue>, uri: &Uri) -> Option<HeaderValue> {
    let host = || host.and_then(|h| h.to_str().ok()).map(host_only);
    let path = uri.path();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let text = match to {
        RedirectTarget::Https { port } => {
            let port = port
                .filter(|p| *p != 443)
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            format!("https://{}{port}{path}{query}", host()?)
        }
        RedirectTarget::Template(t) => {
            // One pass: a variable's value is never read for variables.
            let mut out = String::with_capacity(t.len() + path.len() + query.len());
            let mut left = t.as_str();
            while let Some(open) = left.find('{') {
                out.push_str(&left[..open]);
                let var = &left[open..];
                let (value, len) = if var.starts_with("{path}") {
                    (path, 6)
                } else if var.starts_with("{query}") {
                    (query.as_str(), 7)
                } else {
                    // The config allows only these three.
                    (host()?, 6)
                };
                out.push_str(value);
                left = &var[len..];
            }
            out.push_str(left);
            out
        }
    };
    HeaderValue::from_str(&text).ok()
}

/// A body of `error_pages`, with its type.
#[derive(Debug, Clone)]
pub struct Page {
    pub body: Bytes,
    pub content_type: HeaderValue,
}

/// A listener's `error_pages`, read.
#[derive(Debug, Default)]
pub struct ErrorPages {
    exact: Vec<(u16, Page)>,
    /// `4xx` and `5xx`.
    class: [Option<Page>; 2],
}

impl ErrorPages {
    /// The page for an answer with `status`: its own, else its class's.
    pub fn get(&self, status: StatusCode) -> Option<&Page> {
        let code = status.as_u16();
        if let Some((_, page)) = self.exact.iter().find(|(c, _)| *c == code) {
            return Some(page);
        }
        match code {
            400..=499 => self.class[0].as_ref(),
            500..=599 => self.class[1].as_ref(),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.class.iter().all(Option::is_none)
    }
}

/// Every listener's `error_pages` read from their files, in config order;
/// what cannot be read (missing, unreadable, over [`MAX_ERROR_PAGE`]) is
/// added to `errors` under its key path.
pub fn load_pages(config: &Config, errors: &mut Vec<ConfigError>) -> Vec<Arc<ErrorPages>> {
    config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut pages = ErrorPages::default();
            for entry in &l.error_pages {
                match read_page(entry) {
                    Ok(page) => match entry.status {
                        ErrorStatus::Code(code) => pages.exact.push((code, page)),
                        ErrorStatus::Class(class) => {
                            pages.class[usize::from(class == 5)] = Some(page)
                        }
                    },
                    Err(why) => errors.push(ConfigError::value(
                        format!("listener[{i}].error_pages.{}", entry.status),
                        format_args!("{:?}", entry.file.display().to_string()),
                        why,
                    )),
                }
            }
            Arc::new(pages)
        })
        .collect()
}

fn read_page(entry: &ErrorPageConfig) -> Result<Page, String> {
    use std::io::Read;
    let file = std::fs::File::open(&entry.file).map_err(|e| format!("cannot open: {e}"))?;
    let mut body = Vec::new();
    // One byte past the cap tells a file at the cap from a larger one.
    file.take(MAX_ERROR_PAGE + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read: {e}"))?;
    if body.len() as u64 > MAX_ERROR_PAGE {
        return Err(format!(
            "larger than {} KiB: an error page is sent whole with every such answer",
            MAX_ERROR_PAGE / 1024
        ));
    }
    Ok(Page {
        body: Bytes::from(body),
        content_type: HeaderValue::from_static(content_type(&entry.file)),
    })
}

fn content_type(file: &Path) -> &'static str {
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext.eq_ignore_ascii_case("html") || ext.eq_ignore_ascii_case("htm") {
        "text/html; charset=utf-8"
    } else if ext.eq_ignore_ascii_case("json") {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedirectConfig;

    fn cidr(s: &str) -> Cidr {
        let (a, p) = s.split_once('/').unwrap();
        Cidr {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    fn route(prefix: &str, rewrite: PathRewrite) -> RouteConfig {
        RouteConfig {
            host: None,
            path_prefix: Some(prefix.into()),
            pool: "p".into(),
            rules: RequestRules::default(),
            rewrite,
            headers: Default::default(),
            compress: None,
        }
    }

    fn rewritten(prefix: &str, rewrite: PathRewrite, uri: &str) -> String {
        let rules =
            Rules::compile(&RequestRules::default(), Some(&route(prefix, rewrite))).unwrap();
        rules.rewrite(&uri.parse().unwrap()).unwrap().to_string()
    }

    #[test]
    fn prefixes_are_stripped_and_replaced_keeping_the_query() {
        let strip = || PathRewrite::Strip;
        let to = |s: &str| PathRewrite::Replace(s.into());
        assert_eq!(
            rewritten("/api/v1", strip(), "/api/v1/users?a=1"),
            "/users?a=1"
        );
        assert_eq!(rewritten("/api/v1", strip(), "/api/v1"), "/");
        assert_eq!(rewritten("/api/v1", strip(), "/api/v1?x"), "/?x");
        assert_eq!(rewritten("/api/v1/", strip(), "/api/v1/users"), "/users");
        // The match is by bytes, not segments: the rest still becomes a path.
        assert_eq!(rewritten("/api/v1", strip(), "/api/v1users"), "/users");
        assert_eq!(
            rewritten("/api/v1", to("/v2"), "/api/v1/users"),
            "/v2/users"
        );
        assert_eq!(rewritten("/api/v1", to("/v2"), "/api/v1"), "/v2");
        assert_eq!(
            rewritten("/api/v1/", to("/v2/"), "/api/v1/users"),
            "/v2/users"
        );
        assert_eq!(rewritten("/api/", to("/v2"), "/api/users?q"), "/v2/users?q");
        assert_eq!(rewritten("/", to("/app/"), "/x"), "/app/x");
        assert_eq!(
            rewritten("/api/", strip(), "http://a.test/api/x?q"),
            "http://a.test/x?q",
            "an absolute-form target keeps its authority, which wins over Host"
        );
        let keep = Rules::compile(
            &RequestRules::default(),
            Some(&route("/a", PathRewrite::Keep)),
        );
        assert!(keep.is_none(), "no rule, nothing compiled");
    }

    fn check(
        rules: &RequestRules,
        uri: &str,
        host: Option<&str>,
        client: &str,
    ) -> Result<(), Verdict> {
        let compiled = Rules::compile(rules, None).unwrap();
        let host = host.map(|h| HeaderValue::from_str(h).unwrap());
        compiled.check(
            &Method::GET,
            &uri.parse().unwrap(),
            None,
            host.as_ref(),
            client.parse().unwrap(),
        )
    }

    fn redirect(to: RedirectTarget, code: u16) -> RequestRules {
        RequestRules {
            redirect: Some(RedirectConfig { to, code }),
            ..Default::default()
        }
    }

    fn location_of(r: Result<(), Verdict>) -> String {
        match r {
            Err(Verdict::Redirect { location, .. }) => location.to_str().unwrap().to_owned(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn redirects_keep_path_and_query_and_drop_the_port() {
        let https = redirect(RedirectTarget::Https { port: None }, 308);
        let at = |uri, host| location_of(check(&https, uri, Some(host), "192.0.2.1"));
        assert_eq!(
            at("/a/b?x=1", "mysite.com:8080"),
            "https://mysite.com/a/b?x=1"
        );
        assert_eq!(at("/", "[2001:db8::1]:80"), "https://[2001:db8::1]/");
        let port = redirect(RedirectTarget::Https { port: Some(8443) }, 308);
        assert_eq!(
            location_of(check(&port, "/p", Some("a.com"), "192.0.2.1")),
            "https://a.com:8443/p"
        );
        let standard = redirect(RedirectTarget::Https { port: Some(443) }, 308);
        assert_eq!(
            location_of(check(&standard, "/p", Some("a.com"), "192.0.2.1")),
            "https://a.com/p"
        );
        let t = |t: &str| redirect(RedirectTarget::Template(t.into()), 301);
        let via = |to: &str, uri| location_of(check(&t(to), uri, Some("old.com:81"), "192.0.2.1"));
        assert_eq!(via("https://new.com{path}", "/x?y"), "https://new.com/x");
        assert_eq!(
            via("https://new.com{path}{query}", "/x?y"),
            "https://new.com/x?y"
        );
        assert_eq!(
            via("https://{host}:8443{path}", "/x"),
            "https://old.com:8443/x"
        );
        assert_eq!(via("https://new.com/", "/x?y"), "https://new.com/");
        assert_eq!(
            check(&https, "/", None, "192.0.2.1"),
            Err(Verdict::NoHost),
            "HTTP/1.0 without Host"
        );
    }

    #[test]
    fn deny_wins_then_allow_limits() {
        let rules = RequestRules {
            allow: Some(vec![cidr("10.0.0.0/8"), cidr("2001:db8::/32")]),
            deny: Some(vec![cidr("10.1.0.0/16")]),
            ..Default::default()
        };
        let at = |ip| check(&rules, "/", Some("a"), ip);
        assert_eq!(at("10.2.3.4"), Ok(()));
        assert_eq!(at("::ffff:10.2.3.4"), Ok(()), "mapped IPv4 is IPv4");
        assert_eq!(at("2001:db8::7"), Ok(()));
        assert_eq!(at("10.1.3.4"), Err(Verdict::Forbidden));
        assert_eq!(at("192.0.2.1"), Err(Verdict::Forbidden));
        let deny_only = RequestRules {
            deny: Some(vec![cidr("0.0.0.0/0")]),
            ..Default::default()
        };
        assert_eq!(check(&deny_only, "/", None, "2001:db8::1"), Ok(()));
        assert_eq!(
            check(&deny_only, "/", None, "127.0.0.1"),
            Err(Verdict::Forbidden)
        );
    }

    #[test]
    fn methods_and_declared_lengths() {
        let rules = RequestRules {
            methods: Some(vec!["GET".into(), "POST".into()]),
            max_body: Some(10),
            ..Default::default()
        };
        let compiled = Rules::compile(&rules, None).unwrap();
        let run = |m: Method, length: &'static str| {
            let length = HeaderValue::from_static(length);
            compiled.check(
                &m,
                &"/".parse().unwrap(),
                Some(&length),
                None,
                "127.0.0.1".parse().unwrap(),
            )
        };
        assert_eq!(run(Method::POST, "10"), Ok(()));
        assert_eq!(run(Method::POST, "11"), Err(Verdict::TooLarge(10)));
        assert_eq!(
            run(Method::DELETE, "0"),
            Err(Verdict::Method(HeaderValue::from_static("GET, POST")))
        );
    }

    #[test]
    fn pages_by_status_then_class() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let mut config = Config::default();
        config.listeners.push(crate::config::ListenerConfig {
            name: "l".into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: crate::config::Protocol::Http,
            pool: "p".into(),
            routes: Vec::new(),
            timeouts: Default::default(),
            retries: 0,
            retry_on: Default::default(),
            tls: Vec::new(),
            accept_proxy_protocol: false,
            access_log: false,
            splice: false,
            max_connections: None,
            client_limits: None,
            max_concurrent_streams: 1,
            http1_server: crate::config::Http1Server::Hyper,
            acme: None,
            client_auth: None,
            compress: None,
            headers: Default::default(),
            rules: RequestRules::default(),
            error_pages: vec![
                ErrorPageConfig {
                    status: ErrorStatus::Code(503),
                    file: file("503.html", "<p>busy</p>"),
                },
                ErrorPageConfig {
                    status: ErrorStatus::Class(5),
                    file: file("5xx.json", "{}"),
                },
                ErrorPageConfig {
                    status: ErrorStatus::Class(4),
                    file: dir.path().join("missing.txt"),
                },
            ],
        });
        let mut errors = Vec::new();
        let pages = load_pages(&config, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "listener[0].error_pages.4xx");
        assert!(
            errors[0].message.contains("cannot open"),
            "{}",
            errors[0].message
        );
        let page = pages[0].get(StatusCode::SERVICE_UNAVAILABLE).unwrap();
        assert_eq!(page.body, "<p>busy</p>");
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        let page = pages[0].get(StatusCode::BAD_GATEWAY).unwrap();
        assert_eq!(page.content_type, "application/json");
        assert!(pages[0].get(StatusCode::FORBIDDEN).is_none());

        std::fs::write(
            dir.path().join("big.txt"),
            vec![b'x'; MAX_ERROR_PAGE as usize + 1],
        )
        .unwrap();
        config.listeners[0].error_pages = vec![ErrorPageConfig {
            status: ErrorStatus::Code(404),
            file: dir.path().join("big.txt"),
        }];
        let mut errors = Vec::new();
        load_pages(&config, &mut errors);
        assert!(
            errors[0].message.contains("larger than 1024 KiB"),
            "{errors:?}"
        );
    }
}
