//! `[admin] token_file`: requests that change state (anything but GET and
//! HEAD) must carry `Authorization: Bearer <token>`. Checked before a
//! request is routed, so a refused one changes nothing.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;

/// None when `method` may go on: a read, no token configured, or the
/// right token presented; else the 401 to answer.
pub(super) fn refuse(
    method: &Method,
    headers: &HeaderMap,
    token: Option<&str>,
    peer: impl std::fmt::Display,
) -> Option<Response<Full<Bytes>>> {
    let token = token?;
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    let (challenge, body) = match presented(headers) {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => return None,
        Some(_) => (
            "Bearer error=\"invalid_token\"",
            "unauthorized: wrong bearer token\n",
        ),
        None => (
            "Bearer",
            "unauthorized: this request needs `Authorization: Bearer <token>` ([admin] token_file)\n",
        ),
    };
    let method = crate::lograte::clip(method.as_str());
    crate::log_limited!(warn, %peer, %method, "admin request refused: {}", body.trim_end());
    let mut resp = super::reply(StatusCode::UNAUTHORIZED, "text/plain; charset=utf-8", body);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    Some(resp)
}

/// The credentials of an `Authorization: Bearer ...` header (the scheme's
/// case does not matter, RFC 9110 §11.1).
fn presented(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// Equality whose time depends on the lengths only, not on where the
/// first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i).copied(), b.get(i).copied());
        diff |= usize::from(x.unwrap_or(0) ^ y.unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = authorization {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const PEER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        1,
    ));

    #[test]
    fn posts_need_the_token_and_reads_do_not() {
        let ok = |method: Method, auth: Option<&str>, token: Option<&str>| {
            refuse(&method, &headers(auth), token, PEER).is_none()
        };
        assert!(ok(Method::POST, None, None), "no token configured");
        assert!(ok(Method::GET, None, Some("s3cret")));
        assert!(ok(Method::HEAD, None, Some("s3cret")));
        assert!(ok(Method::POST, Some("Bearer s3cret"), Some("s3cret")));
        assert!(ok(Method::POST, Some("bearer  s3cret "), Some("s3cret")));
        assert!(!ok(Method::POST, None, Some("s3cret")));
        assert!(!ok(Method::POST, Some("Bearer s3cre"), Some("s3cret")));
        assert!(!ok(Method::POST, Some("Bearer s3cretX"), Some("s3cret")));
        assert!(!ok(Method::POST, Some("Basic czNjcmV0"), Some("s3cret")));
        assert!(!ok(Method::POST, Some("Bearer"), Some("s3cret")));
        assert!(!ok(Method::DELETE, None, Some("s3cret")));
    }

    #[test]
    fn a_refusal_is_401_with_a_bearer_challenge() {
        let resp = refuse(&Method::POST, &headers(None), Some("t"), PEER).unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let resp = refuse(&Method::POST, &headers(Some("Bearer x")), Some("t"), PEER).unwrap();
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
    }

    #[test]
    fn same_compares_whole_strings() {
        assert!(same(b"", b""));
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }
}
