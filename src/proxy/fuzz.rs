//! What `http::handle` does to a request head before forwarding it, step
//! by step through the same functions, opened to the fuzz targets
//! (`tests/fuzz/`) and their corpus replay: refuse (method, authority, path),
//! decode unreserved percent-encodings, parse the host for routing, strip hop-by-hop headers, add the
//! forwarded ones, rewrite the target to origin-form, and derive the
//! hashing balancers' keys.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderValue};
use http::{Request, Version};

use super::{headers, http as proxy_http, validate};
use crate::config::HashKey;

pub use validate::Refusal;

/// What routing and balancing read from a forwarded head.
#[derive(Debug)]
pub struct Forwarded {
    /// The authority that became `Host` (None: HTTP/1.0 without one).
    pub authority: Option<HeaderValue>,
    /// The host routes match on: lower-case, without port.
    pub host: Option<String>,
    pub upgrade: bool,
}

/// Refuses `req` or rewrites it into what a backend receives, as
/// `http::handle` does (`proto`: `http` or `https`).
pub fn forward<B>(
    req: &mut Request<B>,
    client: IpAddr,
    proto: &'static str,
) -> Result<Forwarded, Refusal> {
    validate::method(req)?;
    let mut known = validate::KnownHost::default();
    let authority = validate::authority(req, None, None, Some(&mut known))?;
    // An HTTP/2 connection hands its last authority back in (`seen`), an
    // HTTP/1 connection its last valid Host (`known`): taken so, each must
    // give what validating afresh gave.
    let kept = validate::authority(req, None, authority.as_ref(), None);
    assert!(
        matches!(&kept, Ok(a) if *a == authority),
        "a kept authority gave {kept:?}, afresh {authority:?}"
    );
    let known_again = validate::authority(req, None, None, Some(&mut known));
    assert!(
        matches!(&known_again, Ok(a) if *a == authority),
        "a known host gave {known_again:?}, afresh {authority:?}"
    );
    // geolb's HTTP/1 server keeps a lone `Host` out of the map: given
    // so, it must give the same.
    if req.headers().get_all(http::header::HOST).iter().count() == 1 {
        let whole = req.headers().clone();
        let host = req.headers_mut().remove(http::header::HOST);
        let aside = validate::authority(req, host.as_ref(), None, None);
        *req.headers_mut() = whole;
        assert!(
            matches!(&aside, Ok(a) if *a == authority),
            "a host kept out of the map gave {aside:?}, in it {authority:?}"
        );
    }
    let path = validate::path(req.uri().path())?;
    let decoded = validate::decode_unreserved(req.uri());
    // Skipped where the check found no `%`: it must give what it would.
    assert_eq!(
        path.decode_unreserved(req.uri()),
        decoded,
        "a path checked as holding no %"
    );
    if let Some(uri) = decoded {
        *req.uri_mut() = uri;
    }
    let host = authority.as_ref().and_then(headers::host_name);
    let upgrade = req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
    if req.version() == Version::HTTP_2 {
        headers::join_cookies(req.headers_mut());
    }
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    let client = headers::ClientAddr::new(client);
    let mut added = crate::upstream::Added::default();
    let sent = headers::Sent::of(req.headers());
    headers::add_forwarded(
        req.headers_mut(),
        sent,
        &client,
        proto,
        authority.clone(),
        &mut added,
    );
    added.put_into(req.headers_mut());
    proxy_http::to_origin_form(req, authority.clone());
    Ok(Forwarded {
        authority,
        host,
        upgrade,
    })
}

/// The key a hashing balancer places a request by (header, cookie or
/// client address).
pub fn request_key(on: &HashKey, client: IpAddr, headers: &HeaderMap) -> u64 {
    proxy_http::request_key(on, client, headers, None)
}
