//! What a request must be before it is routed: one target authority that
//! geolb routes on and the backend receives alike. A request that fails is
//! answered here and never forwarded.

use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Version};

/// Why a request is answered by geolb instead of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
}

impl Refusal {
    const fn bad(reason: &'static str) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            reason,
        }
    }
}

/// CONNECT asks for a tunnel to any address it names: geolb forwards
/// requests to its pools and tunnels only upgrades, so it refuses CONNECT
/// (never forwarding it as `CONNECT /`).
pub fn method<B>(req: &Request<B>) -> Result<(), Refusal> {
    if req.method() == Method::CONNECT {
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "geolb does not tunnel CONNECT",
        });
    }
    Ok(())
}

/// The methods a 405 names in `Allow`: all that geolb forwards are
/// allowed, but a list cannot say "any but CONNECT"; these are the ones
/// RFC 9110 and RFC 5789 define.
pub const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

/// The authority a request is for, checked: the target URI's when it has
/// one (HTTP/2 `:authority`, RFC 9113 §8.3.1; HTTP/1.1 absolute-form, RFC
/// 9112 §3.2.2), else its one `Host`. `None` only for an HTTP/1.0 request
/// without either. Refused (RFC 9112 §3.2): more than one `Host`, a `Host`
/// or authority that is not `host[:port]`, and a request without any
/// authority over HTTP/1.1 or HTTP/2.
pub fn authority<B>(req: &Request<B>) -> Result<Option<HeaderValue>, Refusal> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::bad("more than one Host header"));
    }
    if let Some(h) = host
        && !is_authority(h.as_bytes())
    {
        return Err(Refusal::bad("the Host header is not a valid host[:port]"));
    }
    if let Some(a) = req.uri().authority() {
        return match HeaderValue::from_str(a.as_str()) {
            Ok(v) if is_authority(v.as_bytes()) => Ok(Some(v)),
            _ => Err(Refusal::bad(
                "the request target's authority is not a valid host[:port]",
            )),
        };
    }
    match host {
        Some(h) => Ok(Some(h.clone())),
        None if req.version() <= Version::HTTP_10 => Ok(None),
        None => Err(Refusal::bad("no Host header")),
    }
}

/// `host[:port]`: a name of letters, digits, `-`, `.`, `_` and `~`, or an
/// IPv6 literal in brackets; at most five digits of port. Stricter than RFC
/// 3986's reg-name (no sub-delims, no percent-encoding, no user info): what
/// a DNS name or address needs and nothing a backend could read otherwise.
fn is_authority(bytes: &[u8]) -> bool {
    let (host_ok, rest) = if let Some(literal) = bytes.strip_prefix(b"[") {
        match literal.iter().position(|&b| b == b']') {
            Some(end) => (
                end > 0
                    && literal[..end]
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
                &literal[end + 1..],
            ),
            None => return false,
        }
    } else {
        let end = bytes.iter().position(|&b| b == b':').unwrap_or(bytes.len());
        (
            end > 0
                && bytes[..end]
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')),
            &bytes[end..],
        )
    };
    host_ok
        && match rest.split_first() {
            None => true,
            Some((b':', port)) => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
            Some(_) => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_is_refused() {
        let r = |m: Method| Request::builder().method(m).body(()).unwrap();
        assert_eq!(method(&r(Method::GET)), Ok(()));
        assert_eq!(method(&r(Method::from_bytes(b"PURGE").unwrap())), Ok(()));
        assert_eq!(
            method(&r(Method::CONNECT)).unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn authorities() {
        for good in [
            "a.example",
            "A-b_c~d.example:8080",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "x:",
        ] {
            assert!(is_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "x, y",
            "x,y",
            "a/evil x",
            "evil@h",
            "user:pw@h",
            ":80",
            "h:80:80",
            "h:123456",
            "h:8o",
            "[::1",
            "[]",
            "[::1]x",
            "[v1.x]",
            "h%2e",
            "h\tx",
        ] {
            assert!(!is_authority(bad.as_bytes()), "{bad:?}");
        }
    }

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut r = Request::builder().version(version).uri(uri);
        for h in hosts {
            r = r.header(header::HOST, *h);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn the_uri_authority_wins_and_host_is_checked_anyway() {
        let got = |r: Request<()>| authority(&r).map(|v| v.map(|v| v.to_str().unwrap().to_owned()));
        let some = |s: &str| Ok(Some(s.to_owned()));
        assert_eq!(got(req(Version::HTTP_11, "/", &["a.test"])), some("a.test"));
        assert_eq!(
            got(req(Version::HTTP_11, "http://a.test/", &["b.test"])),
            some("a.test")
        );
        assert_eq!(
            got(req(Version::HTTP_2, "https://a.test/", &["b.test"])),
            some("a.test")
        );
        assert_eq!(got(req(Version::HTTP_2, "/", &["b.test"])), some("b.test"));
        assert_eq!(got(req(Version::HTTP_10, "/", &[])), Ok(None));
        for refused in [
            req(Version::HTTP_11, "/", &[]),
            req(Version::HTTP_2, "/", &[]),
            req(Version::HTTP_11, "/", &["a.test", "b.test"]),
            req(Version::HTTP_10, "/", &["a.test", "a.test"]),
            req(Version::HTTP_11, "/", &["evil@h"]),
            req(Version::HTTP_11, "http://a.test/", &["x, y"]),
            req(Version::HTTP_11, "http://evil@a.test/", &["a.test"]),
        ] {
            assert_eq!(
                authority(&refused).map(|_| ()).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{refused:?}"
            );
        }
    }
}
