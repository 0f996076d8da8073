//! Header rewriting at the proxy boundary: hop-by-hop headers (and a
//! length that came with a transfer coding) stay on their hop, and the
//! backend learns who the client was.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::upstream::h1::{FieldKind, ReadFields, X_FORWARDED_FOR, X_FORWARDED_PROTO};
use crate::upstream::{Added, AddedValue};

static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// True if the message asks to switch protocols (`Connection: upgrade` and
/// an `Upgrade` header) to anything but `h2c`. An h2c upgrade is not
/// tunnelled: after its `101` the client would speak HTTP/2 straight to the
/// backend, past routing and limits (h2c smuggling); the request goes on
/// as a plain one, its `Upgrade` and `HTTP2-Settings` removed.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && !has_token(headers, &header::UPGRADE, "h2c")
        && has_token(headers, &header::CONNECTION, "upgrade")
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Marks an HTTP/2 answer's dates to be sent as HPACK literals, never
/// entered in the connection's dynamic table. The `h2` crate finds a
/// field in that table by its name and then compares its value with
/// every entry of that name: `Date` changes each second, and each new
/// value entered made that list longer, up to some fifty entries (the
/// table's 4 KiB), each a value in an older answer's buffer, which it
/// kept alive. At 400 HTTP/2 connections over TLS a `/1k` request
/// missed a core's L2 471 times with this, 655 without; each connection
/// held 12 KiB less. Fields that repeat (`Server`, `Content-Type`) stay
/// indexed, one byte each from the second answer: every field sent as a
/// literal made an answer's head twice as long, and cost more
/// instructions at 8 and 64 connections. `h2` sends a sensitive value as
/// "never indexed" (RFC 7541 §6.2.3); it already leaves `Age`, `ETag`
/// and a few more out of the table.
pub fn dates_not_indexed(headers: &mut HeaderMap) {
    // One pass over the few fields an answer has: three hashed lookups
    // cost more.
    for (name, value) in headers.iter_mut() {
        if name == header::DATE || name == header::LAST_MODIFIED || name == header::EXPIRES {
            value.set_sensitive(true);
        }
    }
}

/// Joins the `cookie` fields of an HTTP/2 request, which may come split in
/// one per cookie, into one `Cookie` line with `; ` (RFC 9113 §8.2.3): an
/// HTTP/1.1 backend expects one (RFC 6265 §5.4).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Which hop-by-hop headers a message carries, found in one pass over its
/// names: only those present pay for a hashed removal (most messages carry
/// one or none), and a caller's question about them costs no lookup.
#[derive(Clone, Copy)]
pub struct HopByHop(Sent);

impl HopByHop {
    pub fn of(headers: &HeaderMap) -> HopByHop {
        Sent::of(headers).hop_by_hop()
    }

    pub fn transfer_encoding(self) -> bool {
        self.0.has(Sent::TRANSFER_ENCODING)
    }

    pub fn upgrade(self) -> bool {
        self.0.has(Sent::UPGRADE)
    }
}

/// Removes hop-by-hop headers. With `keep_upgrade`, `Upgrade` survives and
/// `Connection: upgrade` is set again, so the next hop sees the upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip_present(headers, HopByHop::of(headers), keep_upgrade);
}

/// [`strip_hop_by_hop`] with the headers' [`HopByHop`] already found
/// (`present`: of these headers, as they are now). Inlined for the test
/// that most requests stop at: none present, the call's own cost was
/// about 25 instructions a request (`benches/instructions.sh`).
#[inline]
pub fn strip_present(headers: &mut HeaderMap, present: HopByHop, keep_upgrade: bool) {
    if keep_upgrade || present.0.has(Sent::HOP_BY_HOP) {
        strip_found(headers, present, keep_upgrade);
    }
}

fn strip_found(headers: &mut HeaderMap, present: HopByHop, keep_upgrade: bool) {
    let has = |bit| present.0.has(bit);
    let (connection, keep_alive, proxy_connection) = (
        has(Sent::CONNECTION),
        has(Sent::KEEP_ALIVE),
        has(Sent::PROXY_CONNECTION),
    );
    let (te, transfer_encoding, upgrade) = (
        has(Sent::TE),
        has(Sent::TRANSFER_ENCODING),
        has(Sent::UPGRADE),
    );
    if connection {
        // Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1).
        // The usual tokens name nothing to remove, or a header removed anyway.
        let named: SmallVec<[HeaderName; 2]> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            // Nor Host: geolb routed on it, and the backend must see the
            // same (found writing the http_head fuzz target's invariants).
            .filter(|t| {
                !t.eq_ignore_ascii_case("keep-alive")
                    && !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("upgrade")
                    && !t.eq_ignore_ascii_case("host")
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(&name);
        }
        headers.remove(header::CONNECTION);
    }
    if keep_alive {
        headers.remove(&KEEP_ALIVE);
    }
    if proxy_connection {
        headers.remove(&PROXY_CONNECTION);
    }
    if transfer_encoding {
        headers.remove(header::TRANSFER_ENCODING);
        // The message was framed by Transfer-Encoding, which overrides a
        // Content-Length sent beside it (RFC 9112 §6.3): that length is
        // wrong for the next hop, which frames the body afresh.
        headers.remove(header::CONTENT_LENGTH);
    }
    // Every TE line, not the first alone: `TE: trailers` then `TE: gzip`
    // forwarded both (found by the http_head fuzz target).
    if te
        && headers
            .get_all(header::TE)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        headers.remove(header::UPGRADE);
        // Hop-by-hop by definition (RFC 7540 §3.2.1), named in Connection or not.
        headers.remove(&HTTP2_SETTINGS);
    }
}

/// [`strip_present`] for a backend's fields kept as read (no `Connection`
/// among them names another field): the same fields go, in the same
/// order, so that the others end where they would in a map.
pub fn strip_read(read: &mut ReadFields) {
    read.remove(FieldKind::Connection);
    read.remove(FieldKind::KeepAlive);
    read.remove(FieldKind::ProxyConnection);
    if read.remove(FieldKind::TransferEncoding) {
        read.remove(FieldKind::ContentLength);
    }
    if read
        .values(FieldKind::Te)
        .any(|v| !v.eq_ignore_ascii_case(b"trailers"))
    {
        read.remove(FieldKind::Te);
    }
    if read.remove(FieldKind::Upgrade) {
        read.remove(FieldKind::Http2Settings);
    }
}

/// The names a request's steps each look for (the hop-by-hop ones, its
/// id, the forwarded ones, the client certificate's), found in one pass
/// over its names. Each step made a pass of its own before (about 150
/// instructions of a request with one field, `benches/instructions.sh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent(u16);

impl Sent {
    const CONNECTION: u16 = 1;
    const KEEP_ALIVE: u16 = 1 << 1;
    const PROXY_CONNECTION: u16 = 1 << 2;
    const TE: u16 = 1 << 3;
    const TRANSFER_ENCODING: u16 = 1 << 4;
    const UPGRADE: u16 = 1 << 5;
    /// Any of the six above.
    const HOP_BY_HOP: u16 = Sent::CONNECTION
        | Sent::KEEP_ALIVE
        | Sent::PROXY_CONNECTION
        | Sent::TE
        | Sent::TRANSFER_ENCODING
        | Sent::UPGRADE;
    const REQUEST_ID: u16 = 1 << 6;
    const FORWARDED: u16 = 1 << 7;
    const CLIENT_CERT: u16 = 1 << 8;

    pub fn of(headers: &HeaderMap) -> Sent {
        Sent(
            headers
                .keys()
                .fold(0, |sent, name| sent | Sent::bit(name.as_str())),
        )
    }

    /// A map's names are in lower case.
    fn bit(name: &str) -> u16 {
        let known = match name.len() {
            2 if name == "te" => Sent::TE,
            7 if name == "upgrade" => Sent::UPGRADE,
            10 if name == "connection" => Sent::CONNECTION,
            10 if name == "keep-alive" => Sent::KEEP_ALIVE,
            12 if name == "x-request-id" => Sent::REQUEST_ID,
            15 if name == "x-forwarded-for" => Sent::FORWARDED,
            16 if name == "proxy-connection" => Sent::PROXY_CONNECTION,
            16 if name == "x-forwarded-host" => Sent::FORWARDED,
            17 if name == "transfer-encoding" => Sent::TRANSFER_ENCODING,
            17 if name == "x-forwarded-proto" => Sent::FORWARDED,
            _ => 0,
        };
        if name.starts_with(super::client_cert::PREFIX) {
            known | Sent::CLIENT_CERT
        } else {
            known
        }
    }

    fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    pub fn hop_by_hop(self) -> HopByHop {
        HopByHop(self)
    }

    /// `X-Request-Id`.
    pub fn request_id(self) -> bool {
        self.has(Sent::REQUEST_ID)
    }

    /// Any of `X-Forwarded-For`, `-Proto`, `-Host`.
    pub fn forwarded(self) -> bool {
        self.has(Sent::FORWARDED)
    }

    /// A name that only geolb sets, of a client's certificate.
    pub fn client_cert(self) -> bool {
        self.has(Sent::CLIENT_CERT)
    }
}

/// Adds the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host`, replacing what the client sent for the latter two.
/// The three go into `added`, after the client's fields; what the client
/// sent of them is taken out of `headers`.
/// `sent`: the request's names as [`Sent`] found them; only a client that
/// sent one of the three pays for the hashed lookups.
pub fn add_forwarded<'a>(
    headers: &mut HeaderMap,
    sent: Sent,
    client: &'a ClientAddr,
    proto: &'static str,
    host: Option<HeaderValue>,
    added: &mut Added<'a>,
) {
    let forwarded_for = if sent.forwarded() {
        let mut xff = String::new();
        for v in headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(s) = v.to_str() {
                let s = s.trim();
                if !s.is_empty() {
                    xff.push_str(s);
                    xff.push_str(", ");
                }
            }
        }
        for name in [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST] {
            headers.remove(name);
        }
        if xff.is_empty() {
            AddedValue::Lent(&client.header)
        } else {
            xff.push_str(&client.text);
            HeaderValue::from_str(&xff).map_or(AddedValue::Lent(&client.header), AddedValue::Own)
        }
    } else {
        AddedValue::Lent(&client.header)
    };
    added.push(&X_FORWARDED_FOR, forwarded_for);
    added.push(&X_FORWARDED_PROTO, proto_value(proto));
    if let Some(h) = host {
        added.push(&X_FORWARDED_HOST, AddedValue::Own(h));
    }
}

/// `proto` as a field value, made when geolb is built: `from_static` at
/// run time checks each byte again (about 30 instructions a request,
/// `benches/instructions.sh`).
fn proto_value(proto: &'static str) -> AddedValue<'static> {
    static HTTP: HeaderValue = HeaderValue::from_static("http");
    static HTTPS: HeaderValue = HeaderValue::from_static("https");
    match proto {
        "http" => AddedValue::Lent(&HTTP),
        "https" => AddedValue::Lent(&HTTPS),
        other => AddedValue::Own(HeaderValue::from_static(other)),
    }
}

/// A client address as forwarded headers write it, formatted once per
/// connection rather than per request.
pub struct ClientAddr {
    text: String,
    header: HeaderValue,
}

impl ClientAddr {
    pub fn new(ip: IpAddr) -> Self {
        // IPv4-mapped IPv6 clients are written as IPv4.
        let text = ip.to_canonical().to_string();
        let header = HeaderValue::from_str(&text).expect("an IP address is a valid header value");
        ClientAddr { text, header }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The host a request is for, lower-case and without a port.
pub(super) fn host_name(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let host = if let Some(rest) = s.strip_prefix('[') {
        rest.split(']').next()?
    } else {
        s.rsplit_once(':').map_or(s, |(h, _)| h)
    };
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    /// Random heads over the names the stripping and the writer look
    /// for, in any case: a backend's fields kept as read, once stripped,
    /// are what a header map of all of them (hyper's client's) holds once
    /// stripped, in its order; a head that gets a map holds the same
    /// fields; both ways see the same framing and keep-alive.
    #[test]
    fn read_fields_end_as_a_stripped_map_of_them_ends() {
        use crate::upstream::h1::parse_for_test;
        let fields: &[(&str, &[&str])] = &[
            (
                "Connection",
                &["keep-alive", "close", "Keep-Alive, close", "x-a", "upgrade"],
            ),
            ("connection", &["close"]),
            ("Keep-Alive", &["timeout=5"]),
            ("Proxy-Connection", &["keep-alive"]),
            ("TE", &["trailers", "gzip"]),
            ("Upgrade", &["h2c"]),
            ("HTTP2-Settings", &["AA"]),
            ("Transfer-Encoding", &["chunked", "gzip"]),
            ("Content-Length", &["0", "5, 5", "x"]),
            ("Date", &["d"]),
            ("X-Request-Id", &["id"]),
            ("Set-Cookie", &["a=1", "b=2"]),
            ("X-A", &["1", ""]),
            ("x-a", &["2"]),
            ("Trailer", &["x-sum"]),
            ("Server", &["s"]),
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let listed = |m: &HeaderMap| -> Vec<(String, Vec<u8>)> {
            m.iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        let (mut copied, mut mapped) = (0, 0);
        for _ in 0..20_000 {
            let mut text = if next(4) == 0 {
                b"HTTP/1.0 200 OK\r\n".to_vec()
            } else {
                b"HTTP/1.1 200 OK\r\n".to_vec()
            };
            let mut all = HeaderMap::new();
            for _ in 0..next(9) {
                let (name, values) = fields[next(fields.len())];
                let value = values[next(values.len())];
                text.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                all.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            text.extend_from_slice(b"\r\n");
            let shown = String::from_utf8_lossy(&text).into_owned();
            let (as_read, in_map) = (parse_for_test(&text, true), parse_for_test(&text, false));
            let (Ok((empty, read, keep_alive, framing)), Ok((map, _, map_keep_alive, map_framing))) =
                (as_read, in_map)
            else {
                assert!(parse_for_test(&text, true).is_err(), "{shown}");
                assert!(parse_for_test(&text, false).is_err(), "{shown}");
                continue;
            };
            assert_eq!(
                (keep_alive, &framing),
                (map_keep_alive, &map_framing),
                "{shown}"
            );
            strip_hop_by_hop(&mut all, false);
            match read {
                Some(mut read) => {
                    assert!(empty.is_empty(), "{shown}");
                    strip_read(&mut read);
                    let mut got = Vec::new();
                    read.each(|_, n, v, _| {
                        got.push((
                            String::from_utf8(n.to_ascii_lowercase()).unwrap(),
                            v.to_vec(),
                        ))
                    });
                    assert_eq!(got, listed(&all), "{shown}");
                    copied += 1;
                }
                None => {
                    let mut map = map;
                    strip_hop_by_hop(&mut map, false);
                    let (mut got, mut want) = (listed(&map), listed(&all));
                    got.sort();
                    want.sort();
                    assert_eq!(got, want, "{shown}");
                    mapped += 1;
                }
            }
        }
        // Both ways were taken often.
        assert!(
            copied > 2_000 && mapped > 2_000,
            "{copied} copied, {mapped} mapped"
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    /// Each alone: `strip_present` looks further only where one of them
    /// is present.
    #[test]
    fn each_hop_by_hop_field_goes_alone_too() {
        for (name, value) in [
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
        ] {
            let mut h = map(&[(name, value), ("x-kept", "yes")]);
            strip_hop_by_hop(&mut h, false);
            let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["x-kept"], "{name}");
        }
        let mut h = map(&[("x-kept", "yes")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade", "set again for an upgrade");
    }

    #[test]
    fn transfer_encoding_takes_content_length_with_it() {
        let mut h = map(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
        let mut h = map(&[("content-length", "5")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["content-length"], "5");
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("x", "y"), ("cookie", "b=2; c=3")]);
        join_cookies(&mut h);
        let cookies: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        let mut one = map(&[("cookie", "a=1")]);
        join_cookies(&mut one);
        assert_eq!(one["cookie"], "a=1");
    }

    #[test]
    fn te_trailers_and_upgrades_survive() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn an_h2c_upgrade_is_a_plain_request() {
        for upgrade in ["h2c", "websocket, H2C"] {
            let mut h = map(&[
                ("connection", "Upgrade"),
                ("upgrade", upgrade),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ("x-kept", "yes"),
            ]);
            assert!(!wants_upgrade(&h), "{upgrade}");
            strip_hop_by_hop(&mut h, false);
            let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, vec!["x-kept"]);
        }
    }

    /// One pass gives what each step's own question over the names gave,
    /// for every set of names of a list with each one looked for, names a
    /// byte short or long of them, and others.
    #[test]
    fn sent_answers_as_each_step_asked() {
        let names = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "upgrade",
            "x-request-id",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-client-cert-verified",
            "x-client-cert-",
            "x-client-cert",
            "x-forwarded-fo",
            "host",
        ];
        let hop: [&str; 6] = names[..6].try_into().expect("the hop-by-hop names lead");
        for set in 0u32..1 << names.len() {
            let mut h = HeaderMap::new();
            let present: Vec<&str> = (0..names.len())
                .filter(|i| set & (1 << i) != 0)
                .map(|i| names[i])
                .collect();
            for n in &present {
                h.append(HeaderName::from_static(n), HeaderValue::from_static("1"));
            }
            let sent = Sent::of(&h);
            let has = |n: &str| present.contains(&n);
            let hop_bits = [
                Sent::CONNECTION,
                Sent::KEEP_ALIVE,
                Sent::PROXY_CONNECTION,
                Sent::TE,
                Sent::TRANSFER_ENCODING,
                Sent::UPGRADE,
            ];
            let found = hop_bits.map(|bit| sent.hop_by_hop().0.has(bit));
            assert_eq!(found, hop.map(has), "{present:?}");
            let hop_by_hop = sent.hop_by_hop();
            assert_eq!(hop_by_hop.transfer_encoding(), has("transfer-encoding"));
            assert_eq!(hop_by_hop.upgrade(), has("upgrade"));
            assert_eq!(sent.request_id(), has("x-request-id"), "{present:?}");
            assert_eq!(
                sent.forwarded(),
                has("x-forwarded-for") || has("x-forwarded-proto") || has("x-forwarded-host"),
                "{present:?}"
            );
            assert_eq!(
                sent.client_cert(),
                present.iter().any(|n| n.starts_with("x-client-cert-")),
                "{present:?}"
            );
        }
    }

    #[test]
    fn forwarded_headers() {
        let h = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let client = ClientAddr::new(mapped);
        // What the backend is sent: the map after the added fields go in.
        let forwarded = |mut h: HeaderMap, proto, host| {
            let mut added = Added::default();
            let sent = Sent::of(&h);
            add_forwarded(&mut h, sent, &client, proto, host, &mut added);
            let sent = h.clone();
            added.put_into(&mut h);
            (sent, h)
        };
        let (sent, h) = forwarded(h, "http", Some(HeaderValue::from_static("a.example")));
        assert!(sent.is_empty(), "the client's are taken out: {sent:?}");
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        let (_, fresh) = forwarded(
            map(&[("x-forwarded-host", "evil"), ("x-kept", "yes")]),
            "https",
            None,
        );
        assert_eq!(fresh["x-forwarded-for"], "192.0.2.1");
        assert_eq!(fresh["x-forwarded-proto"], "https");
        assert!(!fresh.contains_key("x-forwarded-host"));
        let names: Vec<&str> = fresh.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "x-forwarded-for", "x-forwarded-proto"]);
        // An empty X-Forwarded-For is dropped, not kept as a leading comma.
        let (_, blank) = forwarded(map(&[("x-forwarded-for", " ")]), "https", None);
        assert_eq!(blank["x-forwarded-for"], "192.0.2.1");
    }
}
