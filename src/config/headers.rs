//! Header rules of listeners and routes (`request_headers`,
//! `response_headers`), and a listener's `request_id` and `hsts`.
//!
//! Names and values are checked here, once: the data path only clones
//! what was built (or expands a template split here into parts).

use http::{HeaderName, HeaderValue};
use toml::de::DeValue;

use super::model::*;
use super::values::is_tchar;
use super::walk::{Ctx, Field, Tbl, suggest};

const RULES_EXAMPLE: &str =
    "{ set = { \"X-Env\" = \"prod\" }, add = { \"X-Via\" = \"geolb\" }, remove = [\"X-Debug\"] }";

/// One year, the `hsts = true` max-age: what hstspreload.org asks for.
const HSTS_YEAR: u64 = 31_536_000;

impl Ctx {
    /// The header keys of listener `t` (`protocol`: its protocol, when
    /// valid). A tcp listener sees no HTTP and takes none of them.
    pub(super) fn listener_headers(
        &mut self,
        t: &Tbl<'_, '_>,
        protocol: Option<Protocol>,
    ) -> Option<ListenerHeaders> {
        const KEYS: [&str; 4] = ["request_headers", "response_headers", "request_id", "hsts"];
        if protocol == Some(Protocol::Tcp) {
            let why = "a tcp listener copies bytes and sees no HTTP headers: remove this";
            return (!self.misplaced(t, &KEYS, why)).then(ListenerHeaders::default);
        }
        let rules = self.header_rule_set(t);
        let request_id = self.opt(t, "request_id", true, Ctx::bool);
        let hsts = self.opt(t, "hsts", None, Ctx::hsts);
        if let (Some(Some(_)), Some(Protocol::Http), Some(f)) = (&hsts, protocol, t.field("hsts")) {
            self.bad(
                &f,
                "browsers ignore Strict-Transport-Security over plain http (RFC 6797 §7.2): \
                 set hsts on the https listener, and redirect http to it",
            );
            return None;
        }
        Some(ListenerHeaders {
            rules: rules?,
            request_id: request_id?,
            hsts: hsts?,
        })
    }

    /// `request_headers` and `response_headers` of a listener or route `t`.
    pub(super) fn header_rule_set(&mut self, t: &Tbl<'_, '_>) -> Option<HeaderRuleSet> {
        let request = self.opt(
            t,
            "request_headers",
            HeaderRules::default(),
            Ctx::header_rules,
        );
        let response = self.opt(
            t,
            "response_headers",
            HeaderRules::default(),
            Ctx::header_rules,
        );
        Some(HeaderRuleSet {
            request: request?,
            response: response?,
        })
    }

    fn header_rules(&mut self, f: &Field<'_, '_>) -> Option<HeaderRules> {
        self.table(
            f,
            &format!("expected a table like {RULES_EXAMPLE}"),
            |c, t| {
                let remove = c.opt(t, "remove", Vec::new(), |c, f| {
                    let items = c.array(f, "expected a list of header names like [\"X-Debug\"]")?;
                    c.each(&items, |c, item| c.parsed(item, header_name))
                });
                let set = c.opt(t, "set", Vec::new(), Ctx::header_values);
                let add = c.opt(t, "add", Vec::new(), Ctx::header_values);
                Some(HeaderRules {
                    remove: remove?,
                    set: set?,
                    add: add?,
                })
            },
        )
    }

    /// A `set` or `add` table: header names as keys, templates as values.
    fn header_values(&mut self, f: &Field<'_, '_>) -> Option<Vec<(HeaderName, HeaderTemplate)>> {
        let DeValue::Table(map) = f.get() else {
            self.bad(
                f,
                "expected a table of names and values like { \"X-Env\" = \"prod\" }",
            );
            return None;
        };
        let mut out: Vec<(HeaderName, HeaderTemplate)> = Vec::with_capacity(map.len());
        let mut ok = true;
        for (key, value) in map.iter() {
            let key: &str = key.get_ref();
            let item = Field {
                path: format!("{}.{}", f.path, key_text(key)),
                value,
            };
            let name = match header_name(key) {
                Ok(name) => name,
                Err(why) => {
                    self.err(item.path.clone(), item.offset(), why);
                    ok = false;
                    continue;
                }
            };
            // TOML keys differ by case where header names do not.
            if let Some((first, _)) = out.iter().find(|(n, _)| *n == name) {
                let why = format!("names the header {first} again: header names ignore case");
                self.err(item.path.clone(), item.offset(), why);
                ok = false;
                continue;
            }
            match self.parsed(&item, template) {
                Some(value) => out.push((name, value)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// `hsts = true | false | { max_age, include_subdomains, preload }`.
    fn hsts(&mut self, f: &Field<'_, '_>) -> Option<Option<HeaderValue>> {
        let expected = "expected true, false or a table like \
                        { max_age = \"365d\", include_subdomains = true, preload = false }";
        match f.get() {
            DeValue::Boolean(false) => return Some(None),
            DeValue::Boolean(true) => return Some(Some(hsts_value(HSTS_YEAR, false, false))),
            DeValue::Table(_) => {}
            _ => {
                self.bad(f, expected);
                return None;
            }
        }
        self.table(f, expected, |c, t| {
            let year = std::time::Duration::from_secs(HSTS_YEAR);
            let max_age = c.opt(t, "max_age", year, |c, f| c.duration(f, true));
            let subdomains = c.opt(t, "include_subdomains", false, Ctx::bool);
            let preload = c.opt(t, "preload", false, Ctx::bool);
            let (max_age, subdomains, preload) = (max_age?, subdomains?, preload?);
            if preload && let Some(f) = t.field("preload") {
                // hstspreload.org refuses a site whose header lacks these,
                // and a browser's preload list outlives any later change.
                let why = "the preload list takes only max_age of at least \"365d\" with \
                           include_subdomains = true: set both, or preload = false";
                if !subdomains || max_age < year {
                    c.bad(&f, why);
                    return None;
                }
            }
            Some(Some(hsts_value(max_age.as_secs(), subdomains, preload)))
        })
    }
}

fn hsts_value(max_age: u64, subdomains: bool, preload: bool) -> HeaderValue {
    let mut s = format!("max-age={max_age}");
    if subdomains {
        s.push_str("; includeSubDomains");
    }
    if preload {
        s.push_str("; preload");
    }
    HeaderValue::try_from(s).unwrap_or_else(|_| unreachable!("digits and letters only"))
}

/// A key as it would be written in the file, for a key path.
fn key_text(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// Headers no rule may touch: those of one hop (RFC 9110 §7.6.1), and
/// those that frame the message or name its target, which geolb sets
/// itself; a rule changing them would break the exchange, not adjust it.
const RESERVED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "host",
    "content-length",
];

/// A header name a rule may use, lower-cased.
pub(super) fn header_name(s: &str) -> Result<HeaderName, String> {
    if s.starts_with(':') {
        return Err(
            "pseudo-headers belong to HTTP/2 framing: geolb sets them from the request".to_owned(),
        );
    }
    if s.is_empty() || !s.bytes().all(is_tchar) {
        return Err(
            "expected a header name of letters, digits and !#$%&'*+-.^_`|~ (RFC 9110 token)"
                .to_owned(),
        );
    }
    let lower = s.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) {
        return Err(format!(
            "{s} is set by geolb for each hop or message, never by a rule \
             (reserved: {})",
            RESERVED.join(", ")
        ));
    }
    HeaderName::from_bytes(lower.as_bytes()).map_err(|e| e.to_string())
}

/// A header value with `{variable}`s; `{{` and `}}` are braces.
pub(super) fn template(s: &str) -> Result<HeaderTemplate, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '{' if rest.starts_with('{') => {
                rest = &rest[1..];
                text.push('{');
            }
            '}' if rest.starts_with('}') => {
                rest = &rest[1..];
                text.push('}');
            }
            '{' => {
                let Some(end) = rest.find('}') else {
                    return Err("a \"{\" without its \"}\": write \"{{\" for a brace".to_owned());
                };
                let name = &rest[..end];
                rest = &rest[end + 1..];
                let Some((_, var)) = HeaderVar::SPELLINGS.iter().find(|(n, _)| *n == name) else {
                    let known: Vec<String> = HeaderVar::SPELLINGS
                        .iter()
                        .map(|(n, _)| format!("{{{n}}}"))
                        .collect();
                    let hint = suggest(name, HeaderVar::SPELLINGS.iter().map(|(n, _)| *n))
                        .map(|n| format!(" (did you mean {{{n}}}?)"))
                        .unwrap_or_default();
                    return Err(format!(
                        "unknown variable {{{name}}}{hint}; known: {}; \"{{{{\" for a brace",
                        known.join(", ")
                    ));
                };
                if !text.is_empty() {
                    parts.push(TemplatePart::Text(std::mem::take(&mut text)));
                }
                parts.push(TemplatePart::Var(*var));
            }
            '}' => return Err("a \"}\" without its \"{\": write \"}}\" for a brace".to_owned()),
            '\r' | '\n' | '\0' => {
                return Err(
                    "CR, LF and NUL cannot be in a header value (they would end or cut the header)"
                        .to_owned(),
                );
            }
            c if c.is_ascii_control() && c != '\t' => {
                return Err("control characters cannot be in a header value".to_owned());
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(TemplatePart::Text(text));
    }
    let fixed = match parts.as_slice() {
        [] => Some(HeaderValue::from_static("")),
        [TemplatePart::Text(t)] => {
            Some(HeaderValue::try_from(t.as_str()).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    Ok(HeaderTemplate { parts, fixed })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errors, parse};
    use super::*;

    const POOL: &str = "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:8080\" }]\n";

    fn listener(protocol: &str, extra: &str) -> String {
        let tls = if protocol == "https" {
            "tls = [{ cert = \"c.pem\", key = \"k.pem\" }]\n"
        } else {
            ""
        };
        format!(
            "{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\n\
             pool = \"p\"\n{tls}{extra}\n"
        )
    }

    fn name(s: &str) -> HeaderName {
        HeaderName::from_bytes(s.as_bytes()).unwrap()
    }

    #[test]
    fn rules_are_read_in_order_with_their_variables() {
        let config = parse(&listener(
            "http",
            "request_headers = { remove = [\"X-Debug\"], set = { \"X-Env\" = \"prod\" }, \
             add = { \"X-Client\" = \"{client_ip}:{client_port} {{x}}\" } }\n\
             response_headers = { remove = [\"Server\"] }\n\
             routes = [{ path_prefix = \"/a/\", pool = \"p\", response_headers = { set = { \"X-Route\" = \"a\" } } }]",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let l = &config.listeners[0];
        let req = &l.headers.rules.request;
        assert_eq!(req.remove, [name("x-debug")]);
        assert_eq!(req.set[0].0, name("x-env"));
        assert_eq!(req.set[0].1.fixed, Some(HeaderValue::from_static("prod")));
        let (n, t) = &req.add[0];
        assert_eq!(*n, name("x-client"));
        assert_eq!(t.fixed, None);
        assert_eq!(
            t.parts,
            [
                TemplatePart::Var(HeaderVar::ClientIp),
                TemplatePart::Text(":".into()),
                TemplatePart::Var(HeaderVar::ClientPort),
                TemplatePart::Text(" {x}".into()),
            ]
        );
        assert_eq!(l.headers.rules.response.remove, [name("server")]);
        assert!(l.headers.request_id);
        assert_eq!(l.headers.hsts, None);
        assert_eq!(l.routes[0].headers.response.set[0].0, name("x-route"));
        assert!(l.routes[0].headers.request.is_empty());
    }

    #[test]
    fn hsts_forms() {
        let hsts = |v: &str| {
            let config = parse(&listener("https", &format!("hsts = {v}"))).unwrap();
            config.listeners[0].headers.hsts.clone()
        };
        assert_eq!(
            hsts("true"),
            Some(HeaderValue::from_static("max-age=31536000"))
        );
        assert_eq!(hsts("false"), None);
        assert_eq!(
            hsts("{ max_age = \"730d\", include_subdomains = true, preload = true }"),
            Some(HeaderValue::from_static(
                "max-age=63072000; includeSubDomains; preload"
            ))
        );
        assert_eq!(
            hsts("{ max_age = \"0s\" }"),
            Some(HeaderValue::from_static("max-age=0"))
        );
        assert_eq!(
            hsts("{}"),
            Some(HeaderValue::from_static("max-age=31536000"))
        );
        // Off on plain http is no error: nothing would be sent.
        assert_eq!(
            parse(&listener("http", "hsts = false")).unwrap().listeners[0]
                .headers
                .hsts,
            None
        );
        let off = parse(&listener("http", "request_id = false")).unwrap();
        assert!(!off.listeners[0].headers.request_id);
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases: &[(String, &str, &str)] = &[
            (
                listener("http", "request_headers = { set = { \"X Env\" = \"a\" } }"),
                "listener[0].request_headers.set.\"X Env\"",
                "RFC 9110 token",
            ),
            (
                listener(
                    "http",
                    "request_headers = { set = { \"X-A\" = \"a\\r\\nX-B: b\" } }",
                ),
                "listener[0].request_headers.set.X-A",
                "CR, LF and NUL",
            ),
            (
                listener(
                    "http",
                    "request_headers = { add = { \"X-A\" = \"a\\u0000\" } }",
                ),
                "listener[0].request_headers.add.X-A",
                "CR, LF and NUL",
            ),
            (
                listener(
                    "http",
                    "response_headers = { add = { \"X-A\" = \"\\u0007\" } }",
                ),
                "listener[0].response_headers.add.X-A",
                "control characters",
            ),
            (
                listener(
                    "http",
                    "request_headers = { set = { \"X-A\" = \"{clinet_ip}\" } }",
                ),
                "listener[0].request_headers.set.X-A",
                "unknown variable {clinet_ip} (did you mean {client_ip}?)",
            ),
            (
                listener(
                    "http",
                    "request_headers = { set = { \"X-A\" = \"{host\" } }",
                ),
                "listener[0].request_headers.set.X-A",
                "without its \"}\"",
            ),
            (
                listener("http", "request_headers = { set = { \"X-A\" = \"a}\" } }"),
                "listener[0].request_headers.set.X-A",
                "without its \"{\"",
            ),
            (
                listener("http", "request_headers = { remove = [\"Connection\"] }"),
                "listener[0].request_headers.remove[0]",
                "reserved",
            ),
            (
                listener(
                    "http",
                    "response_headers = { set = { \"Content-Length\" = \"1\" } }",
                ),
                "listener[0].response_headers.set.Content-Length",
                "reserved",
            ),
            (
                listener("http", "request_headers = { set = { \"Host\" = \"a\" } }"),
                "listener[0].request_headers.set.Host",
                "reserved",
            ),
            (
                listener("http", "request_headers = { remove = [\":authority\"] }"),
                "listener[0].request_headers.remove[0]",
                "pseudo-headers",
            ),
            (
                listener(
                    "http",
                    "request_headers = { set = { \"X-A\" = \"1\", \"x-a\" = \"2\" } }",
                ),
                "listener[0].request_headers.set.x-a",
                "again",
            ),
            (
                listener("http", "request_headers = { set = { \"X-A\" = 1 } }"),
                "listener[0].request_headers.set.X-A",
                "a string",
            ),
            (
                listener(
                    "http",
                    "request_headers = { replace = { \"X-A\" = \"1\" } }",
                ),
                "listener[0].request_headers.replace",
                "unknown key",
            ),
            (
                listener("http", "response_headers = [\"X-A\"]"),
                "listener[0].response_headers",
                "a table like",
            ),
            (
                listener("http", "request_headers = { remove = \"X-A\" }"),
                "listener[0].request_headers.remove",
                "a list",
            ),
            (
                listener("http", "hsts = true"),
                "listener[0].hsts",
                "RFC 6797",
            ),
            (
                listener("https", "hsts = \"yes\""),
                "listener[0].hsts",
                "expected true, false or a table",
            ),
            (
                listener(
                    "https",
                    "hsts = { max_age = \"30d\", include_subdomains = true, preload = true }",
                ),
                "listener[0].hsts.preload",
                "at least \"365d\"",
            ),
            (
                listener("https", "hsts = { preload = true }"),
                "listener[0].hsts.preload",
                "include_subdomains = true",
            ),
            (
                listener("https", "hsts = { max_age = 3600 }"),
                "listener[0].hsts.max_age",
                "\"3600s\"",
            ),
            (
                listener("https", "request_id = \"yes\""),
                "listener[0].request_id",
                "true or false",
            ),
            (
                listener("tcp", "response_headers = { remove = [\"Server\"] }"),
                "listener[0].response_headers",
                "tcp listener",
            ),
            (
                listener(
                    "http",
                    "routes = [{ host = \"a.test\", pool = \"p\", request_headers = { set = { \"X-A\" = \"{nope}\" } } }]",
                ),
                "listener[0].routes[0].request_headers.set.X-A",
                "unknown variable",
            ),
            (
                listener(
                    "http",
                    "routes = [{ host = \"a.test\", pool = \"p\", hsts = true }]",
                ),
                "listener[0].routes[0].hsts",
                "unknown key",
            ),
        ];
        for (text, path, words) in cases {
            let found = errors(text);
            assert_eq!(found.len(), 1, "{text}: {found:?}");
            assert_eq!(found[0].path, *path, "{text}");
            assert!(
                found[0].message.contains(words),
                "{path}: {}",
                found[0].message
            );
            assert!(found[0].line.is_some(), "{path}");
        }
    }

    #[test]
    fn templates_split_once() {
        assert_eq!(
            template("").unwrap().fixed,
            Some(HeaderValue::from_static(""))
        );
        assert_eq!(
            template("{{{scheme}}}").unwrap().parts,
            [
                TemplatePart::Text("{".into()),
                TemplatePart::Var(HeaderVar::Scheme),
                TemplatePart::Text("}".into()),
            ]
        );
        for (_, var) in HeaderVar::SPELLINGS {
            let t = template(&format!("{{{}}}", var.as_str())).unwrap();
            assert_eq!(t.parts, [TemplatePart::Var(*var)]);
        }
        // Non-ASCII text is sent as its UTF-8 bytes (RFC 9110 obs-text).
        assert!(template("café").unwrap().fixed.is_some());
    }
}
