//! Sticky sessions by a cookie geolb inserts (a pool's `sticky`), as
//! HAProxy's `cookie NAME insert indirect nocache`: the cookie names a
//! backend by an opaque value, is taken off the request before it goes to
//! the backend, and a response that sets it is marked `private` for
//! shared caches.
//!
//! A backend's value is the first 64 bits of HMAC-SHA256 keyed by the
//! pool's `secret` (empty without one) over the pool name and the
//! backend address: stable across reloads and restarts, and the same on
//! every geolb with that config, so two nodes behind one DNS name agree.
//! Everything a response needs is made once per snapshot, so setting the
//! cookie costs no formatting per request.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderValue};

use crate::config::{SameSite, StickyConfig};

pub struct Sticky {
    name: Box<str>,
    /// Per backend, in the pool's order: its cookie value.
    values: Box<[[u8; VALUE_LEN]]>,
    /// Per backend: `Set-Cookie` for a request that came over cleartext,
    /// then over TLS (the same two when `secure` is set).
    set_cookie: Box<[[HeaderValue; 2]]>,
}

/// 64 bits in hex: unguessable with a secret, and no collision to fear
/// among a pool's backends.
const VALUE_LEN: usize = 16;

impl Sticky {
    pub fn new(pool: &str, config: &StickyConfig, backends: &[SocketAddr]) -> Sticky {
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            config.secret.as_deref().unwrap_or("").as_bytes(),
        );
        let values: Box<[[u8; VALUE_LEN]]> = backends
            .iter()
            .map(|addr| {
                // The NUL keeps ("a", "b:1") and ("a\0b", ...) apart; pool
                // names cannot hold one.
                let message = format!("{pool}\0{addr}");
                let tag = ring::hmac::sign(&key, message.as_bytes());
                hex(&tag.as_ref()[..VALUE_LEN / 2])
            })
            .collect();
        let set_cookie = values
            .iter()
            .map(|v| [false, true].map(|tls| set_cookie(config, v, tls)))
            .collect();
        Sticky {
            name: config.cookie.as_str().into(),
            values,
            set_cookie,
        }
    }

    /// The backend this request's cookie names (None: no cookie, or one
    /// naming no backend of the pool, forged or from an older config), and
    /// takes the cookie off the request: the backend never sees it.
    pub fn take(&self, headers: &mut HeaderMap) -> Option<usize> {
        let mut value = None;
        let mut kept: Vec<Vec<u8>> = Vec::new();
        let mut found = false;
        for line in headers.get_all(header::COOKIE) {
            let mut rest = Vec::with_capacity(line.len());
            for pair in line.as_bytes().split(|&b| b == b';') {
                let trimmed = pair.trim_ascii();
                match trimmed.strip_prefix(self.name.as_bytes()) {
                    Some(v) if v.first() == Some(&b'=') => {
                        found = true;
                        value.get_or_insert_with(|| v[1..].to_vec());
                    }
                    _ if trimmed.is_empty() => {}
                    _ => {
                        if !rest.is_empty() {
                            rest.extend_from_slice(b"; ");
                        }
                        rest.extend_from_slice(trimmed);
                    }
                }
            }
            kept.push(rest);
        }
        if !found {
            return None;
        }
        headers.remove(header::COOKIE);
        for line in kept.into_iter().filter(|l| !l.is_empty()) {
            if let Ok(v) = HeaderValue::from_bytes(&line) {
                headers.append(header::COOKIE, v);
            }
        }
        let value = value?;
        self.values.iter().position(|v| v[..] == value[..])
    }

    /// Sets the cookie naming backend `index` on its response (`tls`: the
    /// request came over TLS), and keeps shared caches from storing a
    /// response that carries it.
    pub fn set(&self, headers: &mut HeaderMap, index: usize, tls: bool) {
        let Some(values) = self.set_cookie.get(index) else {
            return;
        };
        headers.append(header::SET_COOKIE, values[usize::from(tls)].clone());
        private(headers);
    }
}

fn hex(bytes: &[u8]) -> [u8; VALUE_LEN] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; VALUE_LEN];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    out
}

fn set_cookie(config: &StickyConfig, value: &[u8; VALUE_LEN], tls: bool) -> HeaderValue {
    let mut s = format!(
        "{}={}; Path=/",
        config.cookie,
        String::from_utf8_lossy(value)
    );
    if let Some(age) = config.max_age {
        s.push_str(&format!("; Max-Age={}", age.as_secs().max(1)));
    }
    // Browsers drop a SameSite=None cookie without Secure.
    if config.secure.unwrap_or(tls) || config.same_site == Some(SameSite::None) {
        s.push_str("; Secure");
    }
    if config.http_only {
        s.push_str("; HttpOnly");
    }
    if let Some(same_site) = config.same_site {
        s.push_str("; SameSite=");
        s.push_str(same_site.as_str());
    }
    HeaderValue::from_str(&s).expect("a validated cookie name and hex value make a header value")
}

/// `Cache-Control: private` added (HAProxy's `nocache`): a shared cache
/// storing this response would hand one client's cookie to others. A
/// response already private or not stored keeps its value; `public` goes.
fn private(headers: &mut HeaderMap) {
    let mut directives: Vec<String> = Vec::new();
    for v in headers.get_all(header::CACHE_CONTROL) {
        let text = String::from_utf8_lossy(v.as_bytes());
        directives.extend(
            text.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
        );
    }
    let named = |d: &str, name: &str| {
        d.split('=')
            .next()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
    };
    if directives
        .iter()
        .any(|d| named(d, "private") || named(d, "no-store"))
    {
        return;
    }
    let mut kept: Vec<&str> = directives
        .iter()
        .map(String::as_str)
        .filter(|d| !named(d, "public"))
        .collect();
    kept.push("private");
    if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
        headers.insert(header::CACHE_CONTROL, v);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> StickyConfig {
        StickyConfig {
            cookie: "SRV".into(),
            max_age: None,
            secure: None,
            http_only: true,
            same_site: None,
            secret: None,
        }
    }

    fn addrs() -> Vec<SocketAddr> {
        vec![
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ]
    }

    fn cookie_value(sticky: &Sticky, index: usize) -> String {
        String::from_utf8(sticky.values[index].to_vec()).unwrap()
    }

    #[test]
    fn values_depend_on_pool_address_and_secret_only() {
        let a = Sticky::new("web", &config(), &addrs());
        let again = Sticky::new("web", &config(), &addrs());
        assert_eq!(a.values, again.values);
        assert_ne!(a.values[0], a.values[1]);
        // Order in the pool does not matter: a backend keeps its value.
        let reversed: Vec<SocketAddr> = addrs().into_iter().rev().collect();
        assert_eq!(
            Sticky::new("web", &config(), &reversed).values[1],
            a.values[0]
        );
        assert_ne!(
            Sticky::new("api", &config(), &addrs()).values[0],
            a.values[0]
        );
        let keyed = StickyConfig {
            secret: Some("0123456789abcdef".into()),
            ..config()
        };
        assert_ne!(Sticky::new("web", &keyed, &addrs()).values[0], a.values[0]);
        assert!(cookie_value(&a, 0).bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn take_finds_the_backend_and_removes_only_its_cookie() {
        let s = Sticky::new("web", &config(), &addrs());
        let v = cookie_value(&s, 1);
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; SRV={v}; SRVX=2")).unwrap(),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=3"));
        assert_eq!(s.take(&mut h), Some(1));
        let left: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, ["a=1; SRVX=2", "b=3"]);
        // A cookie alone goes with its header.
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("SRV={v}")).unwrap(),
        );
        assert_eq!(s.take(&mut h), Some(1));
        assert!(h.get(header::COOKIE).is_none());
        // Forged: removed all the same, naming no backend.
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("SRV=10.0.0.1:80; x=1"),
        );
        assert_eq!(s.take(&mut h), None);
        assert_eq!(h.get(header::COOKIE).unwrap(), "x=1");
        // None at all: nothing touched.
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("SRVX=1;  y=2"));
        assert_eq!(s.take(&mut h), None);
        assert_eq!(h.get(header::COOKIE).unwrap(), "SRVX=1;  y=2");
    }

    #[test]
    fn set_cookie_attributes() {
        let s = Sticky::new("web", &config(), &addrs());
        let v = cookie_value(&s, 0);
        let mut h = HeaderMap::new();
        s.set(&mut h, 0, false);
        assert_eq!(
            h[header::SET_COOKIE],
            format!("SRV={v}; Path=/; HttpOnly").as_str()
        );
        assert_eq!(h[header::CACHE_CONTROL], "private");
        let mut h = HeaderMap::new();
        s.set(&mut h, 0, true);
        assert_eq!(
            h[header::SET_COOKIE],
            format!("SRV={v}; Path=/; Secure; HttpOnly").as_str()
        );
        let all = StickyConfig {
            max_age: Some(Duration::from_secs(3600)),
            secure: Some(false),
            http_only: false,
            same_site: Some(SameSite::Strict),
            ..config()
        };
        let s = Sticky::new("web", &all, &addrs());
        let mut h = HeaderMap::new();
        s.set(&mut h, 0, true);
        assert_eq!(
            h[header::SET_COOKIE],
            format!("SRV={v}; Path=/; Max-Age=3600; SameSite=Strict").as_str()
        );
        let none = StickyConfig {
            same_site: Some(SameSite::None),
            ..config()
        };
        let mut h = HeaderMap::new();
        Sticky::new("web", &none, &addrs()).set(&mut h, 0, false);
        assert_eq!(
            h[header::SET_COOKIE],
            format!("SRV={v}; Path=/; Secure; HttpOnly; SameSite=None").as_str()
        );
    }

    #[test]
    fn cache_control_becomes_private() {
        let after = |before: Option<&'static str>| {
            let mut h = HeaderMap::new();
            if let Some(b) = before {
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static(b));
            }
            private(&mut h);
            h[header::CACHE_CONTROL].to_str().unwrap().to_owned()
        };
        assert_eq!(after(None), "private");
        assert_eq!(after(Some("public, max-age=60")), "max-age=60, private");
        assert_eq!(after(Some("no-store")), "no-store");
        assert_eq!(after(Some("private, max-age=5")), "private, max-age=5");
        assert_eq!(after(Some("max-age=60")), "max-age=60, private");
    }
}
