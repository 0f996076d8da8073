//! The configured header rules at request time (`request_headers`,
//! `response_headers`), the `X-Request-Id` of each request, and HSTS.
//!
//! A request meets its listener's rules, then its route's; a response
//! (a backend's or geolb's own) gets the request id and HSTS first, then
//! the response rules, so a rule can change or remove either. Templates
//! were split at load; here they are only filled in. An unconfigured
//! listener pays one `Option` test per side.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};

use super::headers::ClientAddr;
use crate::accesslog::TlsInfo;
use crate::config::{HeaderRules, HeaderTemplate, HeaderVar, TemplatePart};
use crate::request_id::RequestId;
use crate::state::{Listener, Route, RouteHeaders};
use crate::upstream::Added;
use crate::upstream::h1::{FieldKind, ReadFields};

pub(super) use crate::request_id::X_REQUEST_ID;

/// The longest `X-Request-Id` kept from a client; nginx's `$request_id` is
/// 32 characters, a UUID 36, a W3C traceparent 55.
const MAX_REQUEST_ID: usize = 200;

/// What one request's answer gets on its way to the client, gathered
/// while the request is handled.
pub(super) struct Reply<'c> {
    /// Written once per connection (as in X-Forwarded-For).
    client: &'c ClientAddr,
    port: u16,
    tls: Option<TlsInfo>,
    scheme: &'static str,
    rules: Option<Arc<RouteHeaders>>,
    /// The request's id: for the response and `{request_id}`.
    request_id: Option<RequestId>,
    /// Whether the response carries `request_id` (`request_id = true`).
    echo_id: bool,
    /// As routed on, for `{host}`.
    host: Option<HeaderValue>,
    hsts: Option<HeaderValue>,
}

impl<'c> Reply<'c> {
    /// For a request of a client at `client`:`port` (over `tls`, if any).
    pub(super) fn new(
        client: &'c ClientAddr,
        port: u16,
        tls: Option<TlsInfo>,
        scheme: &'static str,
    ) -> Reply<'c> {
        Reply {
            client,
            port,
            tls,
            scheme,
            rules: None,
            request_id: None,
            echo_id: false,
            host: None,
            hsts: None,
        }
    }

    /// On a request to `listener`, before anything answers it: its id
    /// (taken out of `headers`, to be sent in `added`), and what every
    /// answer of this listener gets.
    /// `sent_id`: whether `headers` has an `X-Request-Id`.
    pub(super) fn start(
        &mut self,
        listener: &Listener,
        headers: &mut HeaderMap,
        sent_id: bool,
        added: &mut Added,
    ) {
        let config = &listener.config.headers;
        self.rules = listener.default_route.headers.clone();
        self.hsts = config.hsts.clone();
        if config.request_id {
            let id = request_id(headers, sent_id);
            added.set_request_id(id.clone());
            self.request_id = Some(id);
            self.echo_id = true;
        } else if self.rules.is_some() {
            // `{request_id}` is then the client's, if it sent a usable one.
            self.request_id = client_id(headers);
        }
    }

    /// Before the request goes to `route`'s backends, `host` as routed on.
    /// The fields geolb adds (`added`) are put into `headers` first, where
    /// the rules can change or remove them.
    pub(super) fn forward(
        &mut self,
        route: &Route,
        host: Option<&HeaderValue>,
        headers: &mut HeaderMap,
        added: &mut Added,
    ) {
        // A route's rules hold its listener's: none there, none at all.
        let Some(rules) = &route.headers else {
            return;
        };
        added.put_into(headers);
        if !self.echo_id && self.request_id.is_none() {
            // Rules of the route alone: `start` saw none to fill.
            self.request_id = client_id(headers);
        }
        self.host = host.cloned();
        apply(&rules.request, headers, |t| self.expand(t, &rules.listener));
        self.rules = Some(rules.clone());
    }

    /// The request's id as the access log has it: geolb's (`request_id =
    /// true`), else the client's.
    pub(super) fn logged_id(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        if self.echo_id {
            self.request_id.as_ref().map(RequestId::value)
        } else {
            headers.get(&X_REQUEST_ID).cloned()
        }
    }

    /// Whether [`Reply::finish`] reads or changes the answer's fields
    /// other than its request id (header rules, HSTS).
    pub(super) fn changes_answer_fields(&self) -> bool {
        self.rules.is_some() || self.hsts.is_some()
    }

    /// What [`Reply::finish`] does to a map, done to a backend's fields
    /// kept as read (no rules or HSTS apply to those): the backend's own
    /// id goes where geolb echoes its own.
    pub(super) fn finish_read(&self, read: &mut ReadFields) {
        if self.echo_id && self.request_id.is_some() {
            read.remove(FieldKind::RequestId);
        }
    }

    /// The answer's headers, on their way out; and the request id it
    /// echoes, if any, to be written after them. The id is put into
    /// `headers` only where response rules may change it (otherwise each
    /// answer hashed its name byte by byte to insert it).
    /// The reply's last use: with no rules to fill in, its id is given
    /// up rather than copied (a reference count taken and given back).
    pub(super) fn finish(&mut self, headers: &mut HeaderMap) -> Option<RequestId> {
        // Both replace what a backend sent: the id is the one geolb logged
        // and passed on, HSTS the edge's policy for the whole site.
        if let Some(v) = &self.hsts {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
        let Some(rules) = &self.rules else {
            let id = self.request_id.take().filter(|_| self.echo_id);
            // One pass over the names: only a backend that sent one pays
            // for the hashed removal.
            if id.is_some() && headers.keys().any(|n| *n == X_REQUEST_ID) {
                headers.remove(&X_REQUEST_ID);
            }
            return id;
        };
        let id = self.request_id.as_ref().filter(|_| self.echo_id);
        if let Some(id) = id {
            headers.insert(X_REQUEST_ID.clone(), id.value());
        }
        apply(&rules.response, headers, |t| {
            self.expand(t, &rules.listener)
        });
        None
    }

    /// `t` filled in for this request; None if the result would not be a
    /// valid value (no variable can make one, but a panic is no answer).
    fn expand(&self, t: &HeaderTemplate, listener: &str) -> Option<HeaderValue> {
        if let Some(fixed) = &t.fixed {
            return Some(fixed.clone());
        }
        let mut out = Vec::with_capacity(64);
        for part in &t.parts {
            match part {
                TemplatePart::Text(s) => out.extend_from_slice(s.as_bytes()),
                TemplatePart::Var(v) => self.write_var(*v, listener, &mut out),
            }
        }
        HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
    }

    fn write_var(&self, var: HeaderVar, listener: &str, out: &mut Vec<u8>) {
        match var {
            HeaderVar::ClientIp => out.extend_from_slice(self.client.as_str().as_bytes()),
            // Not `write!`: formatting costs more than the rest of a rule.
            HeaderVar::ClientPort => {
                let mut digits = [0u8; 5];
                let mut at = digits.len();
                let mut n = self.port;
                loop {
                    at -= 1;
                    digits[at] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                out.extend_from_slice(&digits[at..]);
            }
            HeaderVar::Listener => out.extend_from_slice(listener.as_bytes()),
            HeaderVar::RequestId => {
                if let Some(id) = &self.request_id {
                    out.extend_from_slice(id.as_bytes());
                }
            }
            // As nginx's $ssl_protocol spells it: TLSv1.3.
            HeaderVar::TlsVersion => {
                if let Some(tls) = self.tls {
                    out.extend(
                        tls.version
                            .bytes()
                            .map(|b| if b == b'_' { b'.' } else { b }),
                    );
                }
            }
            HeaderVar::Host => {
                if let Some(host) = self.host.as_ref().and_then(super::headers::host_name) {
                    out.extend_from_slice(host.as_bytes());
                }
            }
            HeaderVar::Scheme => out.extend_from_slice(self.scheme.as_bytes()),
        }
    }
}

/// Each stage in turn: remove, set, add.
fn apply(
    stages: &[HeaderRules],
    headers: &mut HeaderMap,
    expand: impl Fn(&HeaderTemplate) -> Option<HeaderValue>,
) {
    for rules in stages {
        for name in &rules.remove {
            headers.remove(name);
        }
        for (name, t) in &rules.set {
            if let Some(v) = expand(t) {
                headers.insert(name.clone(), v);
            }
        }
        for (name, t) in &rules.add {
            if let Some(v) = expand(t) {
                headers.append(name.clone(), v);
            }
        }
    }
}

/// The id [`Reply::finish`] gave back, put into `headers`: for a server
/// that writes only the map (hyper's), or where a field must follow it.
pub(super) fn put_request_id(headers: &mut HeaderMap, id: &RequestId) {
    headers.insert(X_REQUEST_ID.clone(), id.value());
}

/// Visible ASCII, 1 to [`MAX_REQUEST_ID`] bytes: safe to log and to pass on.
fn valid_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(u8::is_ascii_graphic)
}

/// The request's id: the client's one `X-Request-Id` if valid, else a new
/// one. The client's is taken out of `headers`: the id goes on among the
/// fields geolb adds. `sent`: whether it has one (a request without, most,
/// pays for no hashed lookup).
fn request_id(headers: &mut HeaderMap, sent: bool) -> RequestId {
    if !sent {
        return RequestId::made();
    }
    let mut values = headers.get_all(&X_REQUEST_ID).iter();
    let kept = match (values.next(), values.next()) {
        (Some(v), None) if valid_id(v) => Some(RequestId::kept(v.clone())),
        _ => None,
    };
    headers.remove(&X_REQUEST_ID);
    kept.unwrap_or_else(RequestId::made)
}

/// The client's `X-Request-Id`, if usable, left where it is.
fn client_id(headers: &HeaderMap) -> Option<RequestId> {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| valid_id(v))
        .cloned()
        .map(RequestId::Kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_id_is_kept_and_any_other_replaced() {
        let cases: &[(&[&str], bool)] = &[
            (&["abc-123"], true),
            (&[&"x".repeat(MAX_REQUEST_ID)], true),
            (&[&"x".repeat(MAX_REQUEST_ID + 1)], false),
            (&["has space"], false),
            (&[""], false),
            (&["a", "b"], false),
        ];
        for (values, kept) in cases {
            let mut headers = HeaderMap::new();
            headers.append("x-kept", HeaderValue::from_static("1"));
            for v in *values {
                headers.append(&X_REQUEST_ID, HeaderValue::from_str(v).unwrap());
            }
            let sent = crate::proxy::headers::Sent::of(&headers).request_id();
            assert!(sent, "{values:?}");
            let id = request_id(&mut headers, sent);
            assert_eq!(id.as_bytes() == values[0].as_bytes(), *kept, "{values:?}");
            assert_eq!(matches!(id, RequestId::Kept(_)), *kept, "{values:?}");
            // Taken out, to go on among the fields geolb adds.
            assert_eq!(headers.len(), 1, "{values:?}");
            // Kept or made, never indexed by HPACK, to the backend or back.
            assert!(id.value().is_sensitive(), "{values:?}");
        }
        let mut obs = HeaderMap::new();
        obs.insert(&X_REQUEST_ID, HeaderValue::from_bytes(b"caf\xe9").unwrap());
        assert_eq!(request_id(&mut obs, true).as_bytes().len(), 32);
        assert!(obs.is_empty(), "an invalid id is taken out too");
        assert!(
            request_id(&mut HeaderMap::new(), false)
                .value()
                .is_sensitive()
        );
    }
}
