//! The L7 rules of a listener or a route: `redirect`, `max_body`,
//! `methods`, `allow`, `deny`; a route's `strip_prefix` and
//! `replace_prefix`; a listener's `error_pages`.

use std::collections::HashMap;

use toml::de::DeValue;

use super::model::*;
use super::values::{http_path, is_tchar, parse_cidr};
use super::walk::{Ctx, Field, Tbl, first_seen};

/// The keys [`Ctx::request_rules`] reads: a tcp listener has none of them.
const RULE_KEYS: &[&str] = &["redirect", "max_body", "methods", "allow", "deny"];

/// The redirect codes accepted: RFC 9110 §15.4's, less 300 and 305.
const REDIRECT_CODES: &[u16] = &[301, 302, 303, 307, 308];

/// The largest `error_pages` file: a page, not a download.
pub const MAX_ERROR_PAGE: u64 = 1024 * 1024;

impl Ctx {
    /// The request rules set on listener or route `t`. A tcp listener
    /// (`tcp`) copies bytes, so each one set there is an error.
    pub(super) fn request_rules(&mut self, t: &Tbl<'_, '_>, tcp: bool) -> Option<RequestRules> {
        if tcp {
            let why = "a tcp listener copies bytes and sees no requests: \
                       set HTTP rules on an http or https listener";
            for key in RULE_KEYS {
                if let Some(f) = t.field(key) {
                    self.bad(&f, why);
                }
            }
            return Some(RequestRules::default());
        }
        let redirect = self.maybe(t, "redirect", Ctx::redirect);
        let max_body = self.maybe(t, "max_body", |c, f| c.byte_size(f, u64::MAX));
        let methods = self.maybe(t, "methods", Ctx::methods);
        let allow = self.maybe(t, "allow", Ctx::cidrs);
        let deny = self.maybe(t, "deny", Ctx::cidrs);
        Some(RequestRules {
            redirect: redirect?,
            max_body: max_body?,
            methods: methods?,
            allow: allow?,
            deny: deny?,
        })
    }

    /// `strip_prefix` or `replace_prefix` of route `t`, which must have a
    /// `path_prefix` for either.
    pub(super) fn path_rewrite(&mut self, t: &Tbl<'_, '_>) -> Option<PathRewrite> {
        let strip = self.opt(t, "strip_prefix", false, Ctx::bool);
        let replace = self.maybe(t, "replace_prefix", |c, f| c.parsed(f, replacement));
        let (strip, replace) = (strip?, replace?);
        let rewrite = match (strip, replace) {
            (true, Some(_)) => {
                let why = "strip_prefix and replace_prefix both rewrite the prefix: keep one \
                           (replace_prefix = \"/\" strips it too)";
                self.misplaced(t, &["replace_prefix"], why);
                return None;
            }
            (true, None) => PathRewrite::Strip,
            (false, Some(with)) => PathRewrite::Replace(with),
            (false, None) => PathRewrite::Keep,
        };
        if rewrite != PathRewrite::Keep && t.field("path_prefix").is_none() {
            let why = "rewrites the route's path_prefix, which this route lacks: \
                       add path_prefix = \"/api/\"";
            self.misplaced(t, &["strip_prefix", "replace_prefix"], why);
            return None;
        }
        Some(rewrite)
    }

    /// A listener's `error_pages`; a tcp listener (`tcp`) answers nothing.
    pub(super) fn error_pages(
        &mut self,
        f: &Field<'_, '_>,
        tcp: bool,
    ) -> Option<Vec<ErrorPageConfig>> {
        const EXAMPLE: &str = "{ 503 = \"errors/503.html\", \"5xx\" = \"errors/5xx.html\" }";
        if tcp {
            self.bad(f, "a tcp listener answers no request: remove error_pages");
            return None;
        }
        let DeValue::Table(map) = f.get() else {
            self.bad(f, format!("expected a table like {EXAMPLE}"));
            return None;
        };
        let mut ok = true;
        let mut pages = Vec::with_capacity(map.len());
        for (key, value) in map.iter() {
            let key: &str = key.get_ref();
            let entry = Field {
                path: format!("{}.{key}", f.path),
                value,
            };
            let status = error_status(key);
            if let Err(why) = &status {
                self.bad(&entry, why);
            }
            let file = self.path(&entry);
            match (status, file) {
                (Ok(status), Some(file)) => pages.push(ErrorPageConfig { status, file }),
                _ => ok = false,
            }
        }
        ok.then_some(pages)
    }

    fn redirect(&mut self, f: &Field<'_, '_>) -> Option<RedirectConfig> {
        let example = "{ to = \"https\", code = 308 }";
        self.table(f, &format!("expected a table like {example}"), |c, t| {
            let to = c.req(t, "to", "\"https\"", |c, f| c.parsed(f, redirect_target));
            let code = c.maybe(t, "code", |c, f| {
                let n = c.uint(f, 300, 399)? as u16;
                if !REDIRECT_CODES.contains(&n) {
                    c.bad(f, "expected one of 301 | 302 | 303 | 307 | 308");
                    return None;
                }
                Some(n)
            });
            let port = c.maybe(t, "port", |c, f| c.uint(f, 1, 65535).map(|p| p as u16));
            let (mut to, code, port) = (to?, code?, port?);
            match (&mut to, port) {
                (RedirectTarget::Https { port: p }, Some(port)) => *p = Some(port),
                (RedirectTarget::Template(_), Some(_)) => {
                    let why = "port goes with to = \"https\"; write a port in the URL itself";
                    c.misplaced(t, &["port"], why);
                    return None;
                }
                _ => {}
            }
            let code = code.unwrap_or(match to {
                RedirectTarget::Https { .. } => 308,
                RedirectTarget::Template(_) => 302,
            });
            Some(RedirectConfig { to, code })
        })
    }

    fn methods(&mut self, f: &Field<'_, '_>) -> Option<Vec<String>> {
        let items = self.array(f, "expected a list like [\"GET\", \"HEAD\", \"POST\"]")?;
        if items.is_empty() {
            self.bad(
                f,
                "an empty list refuses every request: list the methods to forward",
            );
            return None;
        }
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            let s = c.string(item)?;
            if s.is_empty() || !s.bytes().all(is_tchar) {
                c.bad(item, "expected a method name like \"GET\"");
                return None;
            }
            if s.bytes().any(|b| b.is_ascii_lowercase()) {
                let why = format!(
                    "method names are case-sensitive and clients send them upper-case: \"{}\"",
                    s.to_ascii_uppercase()
                );
                c.bad(item, why);
                return None;
            }
            if let Some(first) = first_seen(&mut seen, s.to_owned(), &item.path) {
                c.bad(item, format!("listed twice (also {first})"));
                return None;
            }
            Some(s.to_owned())
        })
    }

    fn cidrs(&mut self, f: &Field<'_, '_>) -> Option<Vec<Cidr>> {
        let items = self.array(
            f,
            "expected a list like [\"10.0.0.0/8\", \"2001:db8::/32\"]",
        )?;
        self.each(&items, |c, item| c.parsed(item, parse_cidr))
    }
}

/// `"https"`, or a URL (`http://`, `https://`) or absolute path with
/// `{host}`, `{path}` and `{query}` for the request's.
fn redirect_target(s: &str) -> Result<RedirectTarget, String> {
    const FORM: &str = "expected \"https\", a URL like \"https://www.mysite.com{path}{query}\" \
                        or a path like \"/new{path}\"";
    if s == "https" {
        return Ok(RedirectTarget::Https { port: None });
    }
    let lower = s.to_ascii_lowercase();
    let Some(rest) = ["https://", "http://", "/"]
        .iter()
        .find_map(|start| lower.strip_prefix(start))
    else {
        return Err(FORM.to_owned());
    };
    if s.starts_with("//") {
        return Err(format!("{FORM}: \"//\" at the start names another host"));
    }
    if s.starts_with("/{path}") {
        // A request for "//evil.example/" would be sent there.
        return Err(
            "\"/{path}\" gives \"//\" and another host for a path starting with \"/\": \
                    put a segment before it, like \"/new{path}\""
                .to_owned(),
        );
    }
    let no_host = rest.is_empty() || rest.starts_with(['/', '{']) && !rest.starts_with("{host}");
    if s.contains("://") && no_host {
        return Err(format!("{FORM}: the URL needs a host"));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("spaces, control and non-ASCII characters must be percent-encoded".to_owned());
    }
    let mut left = s;
    while let Some(open) = left.find(['{', '}']) {
        let after = &left[open..];
        let Some(var) = ["{host}", "{path}", "{query}"]
            .iter()
            .find(|v| after.starts_with(**v))
        else {
            return Err("the only variables are {host}, {path} and {query}".to_owned());
        };
        left = &after[var.len()..];
    }
    Ok(RedirectTarget::Template(s.to_owned()))
}

/// A `replace_prefix`: a path without a query.
fn replacement(s: &str) -> Result<String, String> {
    let path = http_path(s)?;
    if path.contains('?') {
        return Err("replace_prefix replaces a path: remove the ?query".to_owned());
    }
    Ok(path)
}

/// An `error_pages` key: `"503"` or `"5xx"`.
fn error_status(key: &str) -> Result<ErrorStatus, String> {
    const FORM: &str = "keys are statuses geolb answers with, 400 to 599, or \"4xx\" and \"5xx\"";
    match key {
        "4xx" => return Ok(ErrorStatus::Class(4)),
        "5xx" => return Ok(ErrorStatus::Class(5)),
        _ => {}
    }
    match key.parse::<u16>() {
        Ok(code) if (400..=599).contains(&code) && key.len() == 3 => Ok(ErrorStatus::Code(code)),
        _ => Err(FORM.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::tests::{errors, parse};
    use super::*;

    const POOL: &str = "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:8080\" }]\n";
    const LISTENER: &str = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\n";

    fn listener(extra: &str) -> ListenerConfig {
        let config = parse(&format!("{POOL}{LISTENER}{extra}")).unwrap_or_else(|e| panic!("{e}"));
        config.listeners[0].clone()
    }

    fn route(fields: &str) -> RouteConfig {
        listener(&format!("routes = [{{ pool = \"p\", {fields} }}]"))
            .routes
            .remove(0)
    }

    #[test]
    fn rules_are_read_with_their_defaults() {
        let l = listener("");
        assert!(l.rules.is_empty());
        assert!(l.error_pages.is_empty());
        let l = listener(
            "redirect = { to = \"https\" }\nmax_body = \"10MB\"\nmethods = [\"GET\", \"HEAD\"]\n\
             allow = [\"10.0.0.0/8\"]\ndeny = [\"10.1.0.0/16\", \"2001:db8::/32\"]",
        );
        let redirect = l.rules.redirect.unwrap();
        assert_eq!(redirect.to, RedirectTarget::Https { port: None });
        assert_eq!(redirect.code, 308);
        assert_eq!(l.rules.max_body, Some(10_000_000));
        assert_eq!(l.rules.methods.unwrap(), ["GET", "HEAD"]);
        assert_eq!(l.rules.allow.unwrap().len(), 1);
        assert_eq!(l.rules.deny.unwrap()[1].prefix, 32);
        let l = listener("redirect = { to = \"https\", port = 8443, code = 301 }");
        let redirect = l.rules.redirect.unwrap();
        assert_eq!(redirect.to, RedirectTarget::Https { port: Some(8443) });
        assert_eq!(redirect.code, 301);
        let l = listener("redirect = { to = \"https://www.mysite.com{path}{query}\" }");
        assert_eq!(l.rules.redirect.unwrap().code, 302);
        let l =
            listener("error_pages = { 503 = \"errors/503.html\", \"5xx\" = \"/srv/5xx.json\" }");
        assert_eq!(
            l.error_pages,
            [
                ErrorPageConfig {
                    status: ErrorStatus::Code(503),
                    file: PathBuf::from("/etc/geolb/errors/503.html"),
                },
                ErrorPageConfig {
                    status: ErrorStatus::Class(5),
                    file: PathBuf::from("/srv/5xx.json"),
                },
            ]
        );
    }

    #[test]
    fn routes_rewrite_their_prefix_and_set_their_own_rules() {
        let r = route("path_prefix = \"/api/v1\", strip_prefix = true, max_body = 1024");
        assert_eq!(r.rewrite, PathRewrite::Strip);
        assert_eq!(r.rules.max_body, Some(1024));
        let r = route("path_prefix = \"/api/v1\", replace_prefix = \"/v2\"");
        assert_eq!(r.rewrite, PathRewrite::Replace("/v2".into()));
        let r = route("path_prefix = \"/api/\", strip_prefix = false");
        assert_eq!(r.rewrite, PathRewrite::Keep);
        let listener_rules = RequestRules {
            max_body: Some(5),
            methods: Some(vec!["GET".into()]),
            ..Default::default()
        };
        let merged = listener_rules.overridden_by(&route("host = \"a.com\", max_body = 7").rules);
        assert_eq!(merged.max_body, Some(7));
        assert_eq!(merged.methods, Some(vec!["GET".into()]));
    }

    #[test]
    fn sizes() {
        use super::super::values::parse_size;
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("10 MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("10m").is_err());
        assert!(parse_size("MB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999GB").is_err());
    }

    #[test]
    fn each_mistake_names_its_key() {
        let l = format!("{POOL}{LISTENER}");
        let cases: &[(String, &str, &str)] = &[
            (
                format!("{l}redirect = {{ to = \"https\", code = 304 }}"),
                "listener[0].redirect.code",
                "301 | 302",
            ),
            (
                format!("{l}redirect = {{ to = \"https\", code = 200 }}"),
                "listener[0].redirect.code",
                "from 300 to 399",
            ),
            (
                format!("{l}redirect = {{ to = \"ftp://x\" }}"),
                "listener[0].redirect.to",
                "expected \"https\"",
            ),
            (
                format!("{l}redirect = {{ to = \"//evil.com{{path}}\" }}"),
                "listener[0].redirect.to",
                "another host",
            ),
            (
                format!("{l}redirect = {{ to = \"/{{path}}{{query}}\" }}"),
                "listener[0].redirect.to",
                "another host",
            ),
            (
                format!("{l}redirect = {{ to = \"https://{{path}}\" }}"),
                "listener[0].redirect.to",
                "needs a host",
            ),
            (
                format!("{l}redirect = {{ to = \"https://a.com{{uri}}\" }}"),
                "listener[0].redirect.to",
                "{host}, {path} and {query}",
            ),
            (
                format!("{l}redirect = {{ to = \"https://a.com/x y\" }}"),
                "listener[0].redirect.to",
                "percent-encoded",
            ),
            (
                format!("{l}redirect = {{ to = \"https://a.com\", port = 8443 }}"),
                "listener[0].redirect.port",
                "goes with to = \"https\"",
            ),
            (
                format!("{l}redirect = {{ code = 301 }}"),
                "listener[0].redirect.to",
                "required",
            ),
            (
                format!("{l}max_body = \"10m\""),
                "listener[0].max_body",
                "KiB",
            ),
            (format!("{l}max_body = -1"), "listener[0].max_body", ">= 0"),
            (
                format!("{l}methods = [\"get\"]"),
                "listener[0].methods[0]",
                "\"GET\"",
            ),
            (
                format!("{l}methods = [\"GET\", \"GET\"]"),
                "listener[0].methods[1]",
                "listed twice",
            ),
            (
                format!("{l}methods = []"),
                "listener[0].methods",
                "refuses every request",
            ),
            (
                format!("{l}allow = [\"10.0.0.1/8\"]"),
                "listener[0].allow[0]",
                "\"10.0.0.0/8\"",
            ),
            (
                format!("{l}deny = [\"not-a-network\"]"),
                "listener[0].deny[0]",
                "expected a network",
            ),
            (
                format!("{l}deny = \"10.0.0.0/8\""),
                "listener[0].deny",
                "a list",
            ),
            (
                format!(
                    "{l}routes = [{{ path_prefix = \"/a\", pool = \"p\", strip_prefix = true, replace_prefix = \"/b\" }}]"
                ),
                "listener[0].routes[0].replace_prefix",
                "keep one",
            ),
            (
                format!("{l}routes = [{{ host = \"a.com\", pool = \"p\", strip_prefix = true }}]"),
                "listener[0].routes[0].strip_prefix",
                "add path_prefix",
            ),
            (
                format!(
                    "{l}routes = [{{ path_prefix = \"/a\", pool = \"p\", replace_prefix = \"b\" }}]"
                ),
                "listener[0].routes[0].replace_prefix",
                "starting with \"/\"",
            ),
            (
                format!("{l}error_pages = {{ 200 = \"ok.html\" }}"),
                "listener[0].error_pages.200",
                "400 to 599",
            ),
            (
                format!("{l}error_pages = {{ \"5xx\" = 5 }}"),
                "listener[0].error_pages.5xx",
                "a string",
            ),
            (
                format!("{l}error_pages = [\"503.html\"]"),
                "listener[0].error_pages",
                "a table",
            ),
            (
                format!("{l}protocol = \"tcp\"\nmethods = [\"GET\"]"),
                "listener[0].methods",
                "tcp listener",
            ),
            (
                format!("{l}protocol = \"tcp\"\nerror_pages = {{ 503 = \"a.html\" }}"),
                "listener[0].error_pages",
                "tcp listener",
            ),
        ];
        for (text, path, words) in cases {
            let found = errors(text);
            assert_eq!(found.len(), 1, "{text}: {found:?}");
            assert_eq!(found[0].path, *path, "{text}");
            assert!(found[0].line.is_some(), "{path}");
            assert!(
                found[0].message.contains(words),
                "{path}: {}",
                found[0].message
            );
        }
    }
}
