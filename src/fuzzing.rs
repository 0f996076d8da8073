//! The entry points of the coverage-guided fuzz targets (`tests/fuzz/`, run with
//! cargo-afl) and of their corpus replay in `cargo test`
//! (`tests/fuzz_corpus.rs`): hostile bytes in, the invariants the property
//! tests assert checked, a panic on any breach (which is what the fuzzer
//! reports as a crash). Beside the layers: it calls the parsers of
//! hostile input through the hooks `dns::fuzz` and `proxy::fuzz`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use crate::config::{HashKey, ProxyProtocolVersion};
use crate::dns::{self, AllUp, DatacenterHealth, DnsData, fuzz as dns_fuzz};
use crate::geoip::{GeoDb, Locator};
use crate::proxy::fuzz as proxy_fuzz;
use crate::proxy_protocol::{self, Addresses, HeaderError};

/// A target: bytes in, a panic on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target by name, as `tests/fuzz/` names its binaries and
/// `tests/fuzz/corpus/<name>/` its inputs.
pub const TARGETS: &[(&str, Target)] = &[
    ("dns_fast", dns_fast),
    ("dns_full", dns_full),
    ("config", config),
    ("proxy_protocol", proxy_protocol),
    ("http_head", http_head),
];

/// The zone the DNS targets answer from: static records of each common
/// type, CNAME chains (one a loop, one leaving the zone), a wildcard, an
/// empty non-terminal, a 700-byte TXT (truncation) and geo names at the
/// apex and below it over three data centers, one of them down.
const ZONE: &str = r#"
[geoip]
database = "GEOIP"

[[geoip.network]]
cidr = "10.0.0.0/8"
location = { lat = 50.11, lon = 8.68 }

[dns]
listen = ["127.0.0.1:0"]

[[dns.zone]]
origin = "mysite.com"
soa = { mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }
ns = ["ns1.mysite.com."]
records = [
  { name = "ns1", type = "A", value = "192.0.2.53" },
  { name = "ns1", type = "AAAA", value = "2001:db8::53" },
  { name = "www", type = "CNAME", value = "api.mysite.com." },
  { name = "away", type = "CNAME", value = "elsewhere.example." },
  { name = "loop1", type = "CNAME", value = "loop2.mysite.com." },
  { name = "loop2", type = "CNAME", value = "loop1.mysite.com." },
  { name = "a.deep", type = "A", value = "192.0.2.1" },
  { name = "*.wild", type = "A", value = "192.0.2.2" },
  { name = "@", type = "MX", value = "10 mail.mysite.com." },
  { name = "@", type = "TXT", value = "v=spf1 -all" },
  { name = "big", type = "TXT", value = "BIG" },
]

[[dns.zone]]
origin = "apex.test"
soa = { mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }
ns = ["ns1.mysite.com."]

[[dns.geo]]
name = "apex.test"

[[dns.geo]]
name = "api.mysite.com"
datacenters = ["us-east", "eu-west", "ap-southeast"]

[[dns.geo]]
name = "two.mysite.com"
answers = 2

[[datacenter]]
name = "eu-west"
location = { lat = 53.35, lon = -6.26 }
addresses = ["198.51.100.10", "2001:db8:e::10"]

[[datacenter]]
name = "us-east"
location = { lat = 39.04, lon = -77.49 }
addresses = ["203.0.113.10", "2001:db8:a::10"]

[[datacenter]]
name = "ap-southeast"
location = { lat = 1.35, lon = 103.82 }
addresses = ["192.0.2.10"]
"#;

/// eu-west down: answers skip it, so the geo ranking's fallbacks run.
struct EuWestDown;

impl DatacenterHealth for EuWestDown {
    fn is_up(&self, index: usize) -> bool {
        index != 0
    }
}

/// The zone above, with every data center up and with eu-west down.
fn dns_data() -> &'static [DnsData; 2] {
    static DATA: OnceLock<[DnsData; 2]> = OnceLock::new();
    DATA.get_or_init(|| {
        let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/GeoIP2-City-Test.mmdb");
        let text = ZONE
            .replace("GEOIP", &db.display().to_string())
            .replace("BIG", &"x".repeat(700));
        let config = crate::config::parse_str(&text, Path::new("/fuzz/geolb.toml"))
            .unwrap_or_else(|e| panic!("the fuzz zone: {e}"));
        let geoip = config.geoip.as_ref().expect("the fuzz zone has [geoip]");
        let db = GeoDb::open(&db).unwrap_or_else(|e| panic!("{}: {e}", db.display()));
        let locator = Arc::new(Locator::new(Some(Arc::new(db)), &geoip.networks));
        let up = dns::compile(&config, locator, Arc::new(AllUp))
            .unwrap_or_else(|e| panic!("the fuzz zone: {e:?}"));
        let down = up.with_health(Arc::new(EuWestDown));
        [up, down]
    })
}

/// Sources in the test database (London), in an override network, IPv6,
/// and IPv4-mapped IPv6.
const SOURCES: [&str; 4] = [
    "81.2.69.160:53",
    "10.1.2.3:5353",
    "[2001:db8::1]:53",
    "[::ffff:81.2.69.160]:53",
];

fn source(i: usize) -> SocketAddr {
    SOURCES[i % SOURCES.len()]
        .parse()
        .expect("a socket address")
}

/// A UDP reply as a UDP thread may send it: within the UDP limit, for the
/// packet's id, and never to a response.
fn check_udp_reply(packet: &[u8], reply: &[u8]) {
    assert!(
        reply.len() <= dns_fuzz::MAX_UDP_PAYLOAD,
        "a UDP reply of {} bytes",
        reply.len()
    );
    assert!(
        packet.len() >= 12 && reply.len() >= 12,
        "a reply to {packet:02x?}"
    );
    assert_eq!(reply[..2], packet[..2], "the reply's id");
    assert_eq!(packet[2] & 0x80, 0, "a response answered");
    assert_ne!(reply[2] & 0x80, 0, "a reply that is not a response");
}

/// The UDP fast path: whatever it answers, the general path answers with
/// the same bytes (it is an optimisation, never a second behaviour), and
/// within the UDP limits.
pub fn dns_fast(packet: &[u8]) {
    let (mut fast, mut general) = (Vec::new(), Vec::new());
    for (i, data) in dns_data().iter().enumerate() {
        let src = source(packet.first().map_or(i, |&b| usize::from(b) + i));
        if dns_fuzz::fast(data, packet, src, &mut fast) {
            check_udp_reply(packet, &fast);
            assert!(
                dns_fuzz::general_udp(data, packet, src, &mut general),
                "the fast path answered what the general one does not: {packet:02x?}"
            );
            assert_eq!(
                fast, general,
                "the paths differ on {packet:02x?} from {src}"
            );
        }
    }
}

/// The general path as a UDP thread (fast path first) and as a TCP
/// connection call it, from every source and health: no panic, UDP
/// replies within their limits, TCP replies for the message's id.
pub fn dns_full(packet: &[u8]) {
    let mut reply = Vec::new();
    for data in dns_data() {
        for i in 0..SOURCES.len() {
            let src = source(i);
            if dns_fuzz::udp(data, packet, src, &mut reply) {
                check_udp_reply(packet, &reply);
            }
            if dns_fuzz::tcp(data, packet, src, &mut reply) {
                assert!(reply.len() <= usize::from(u16::MAX), "{}", reply.len());
                assert_eq!(reply[..2], packet[..2], "the TCP reply's id");
            }
        }
    }
}

/// TOML text (UTF-8 only: the file is read as a string) through the
/// parser and validation, and, for a config that parses, the compiling of
/// its zones and geo names that `geolb check` also does: every error has a
/// message and a key path or line.
pub fn config(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let config = match crate::config::parse_str(text, Path::new("/fuzz/geolb.toml")) {
        Ok(config) => config,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an empty error list");
            for e in &errors.0 {
                assert!(!e.message.trim().is_empty(), "{e:?} has no message");
                assert!(
                    !e.path.is_empty() || e.line.is_some(),
                    "{e:?} has neither a key path nor a line"
                );
            }
            return;
        }
    };
    // Zone files would be read from this machine's disk: not the input's.
    let reads_files = config
        .dns
        .as_ref()
        .is_some_and(|d| d.zones.iter().any(|z| z.file.is_some()));
    if !reads_files {
        let networks = config.geoip.as_ref().map_or(&[][..], |g| &g.networks);
        let locator = Arc::new(Locator::new(None, networks));
        if let Err(errors) = dns::compile(&config, locator, Arc::new(AllUp)) {
            for e in &errors {
                assert!(!e.message.trim().is_empty(), "{e:?} has no message");
                assert!(!e.path.is_empty(), "{e:?} has no key path");
            }
        }
    }
}

/// Reads a PROXY header from `input` as a listener does; also returns the
/// bytes left unread.
fn read_proxy_header(input: &[u8]) -> (Result<Option<Addresses>, HeaderError>, &[u8]) {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
    }
    let mut rest = input;
    let result = RT.with(|rt| rt.block_on(proxy_protocol::read_header(&mut rest)));
    (result, rest)
}

/// The PROXY v1/v2 reader: no panic; what it accepts is exactly a header
/// (alone it reads the same and leaves nothing, so nothing after a header
/// is consumed), and its addresses survive re-encoding in both versions.
pub fn proxy_protocol(input: &[u8]) {
    let (result, rest) = read_proxy_header(input);
    let Ok(got) = result else {
        return;
    };
    let taken = &input[..input.len() - rest.len()];
    let (again, left) = read_proxy_header(taken);
    assert_eq!(
        again.ok(),
        Some(got),
        "{taken:02x?} reads differently alone"
    );
    assert!(left.is_empty(), "{taken:02x?} alone leaves bytes");
    let Some(a) = got else {
        return;
    };
    for version in [ProxyProtocolVersion::V1, ProxyProtocolVersion::V2] {
        let encoded = proxy_protocol::encode(version, a.source, a.destination);
        let (back, left) = read_proxy_header(&encoded);
        let back = back
            .unwrap_or_else(|e| panic!("{version:?} of {a:?} does not read: {e:?}"))
            .unwrap_or_else(|| panic!("{version:?} of {a:?} reads as LOCAL"));
        assert!(left.is_empty());
        for (x, y) in [(back.source, a.source), (back.destination, a.destination)] {
            assert_eq!(x.port(), y.port(), "{version:?} of {a:?}");
            assert_eq!(
                x.ip().to_canonical(),
                y.ip().to_canonical(),
                "{version:?} of {a:?}"
            );
        }
    }
}

/// An HTTP/1.x request head as hyper's parser (httparse) reads it, made
/// into an `http::Request` the way hyper does; None where hyper would
/// answer 400 itself.
fn parse_head(input: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = parsed.parse(input).ok()? else {
        return None;
    };
    let version = match parsed.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut req = Request::builder()
        .method(Method::from_bytes(parsed.method?.as_bytes()).ok()?)
        .uri(Uri::try_from(parsed.path?).ok()?)
        .version(version)
        .body(())
        .ok()?;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        req.headers_mut().append(name, value);
    }
    Some(req)
}

/// `host[:port]` as `validate::authority` promises it: ASCII name bytes or
/// a bracketed IPv6 literal, at most five digits of port.
fn plain_authority(v: &[u8]) -> bool {
    let host_end = if v.first() == Some(&b'[') {
        match v.iter().position(|&b| b == b']') {
            Some(i) => i + 1,
            None => return false,
        }
    } else {
        v.iter().position(|&b| b == b':').unwrap_or(v.len())
    };
    let name_ok = v[..host_end]
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~[]:".contains(&b));
    let port_ok = match v[host_end..].split_first() {
        None => true,
        Some((b':', port)) => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    host_end > 0 && name_ok && port_ok
}

/// Headers that never reach a backend: hop-by-hop ones (a `Connection`
/// only as the upgrade's, checked apart).
const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "http2-settings",
    "upgrade",
];

/// The request head handling of `proxy::http` over what httparse reads
/// (as HTTP/1.x and, its headers as they are, as HTTP/2): no panic, and
/// a request that is forwarded carries one `Host` that is the authority
/// it was routed on, `host[:port]`, in origin-form over HTTP/1.1, without
/// hop-by-hop headers, with the client last in `X-Forwarded-For`.
pub fn http_head(input: &[u8]) {
    let Some(parsed) = parse_head(input) else {
        return;
    };
    let client: IpAddr = "192.0.2.77".parse().expect("an address");
    let mut as_http2 = parsed.clone();
    *as_http2.version_mut() = Version::HTTP_2;
    for (mut req, proto) in [(parsed, "http"), (as_http2, "https")] {
        let before = req.headers().clone();
        let Ok(forwarded) = proxy_fuzz::forward(&mut req, client, proto) else {
            continue;
        };
        assert_ne!(req.method(), Method::CONNECT);
        assert_eq!(req.version(), Version::HTTP_11);
        assert!(
            req.uri().authority().is_none(),
            "not origin-form: {}",
            req.uri()
        );
        let h = req.headers();
        let hosts: Vec<&HeaderValue> = h.get_all(header::HOST).iter().collect();
        match &forwarded.authority {
            Some(a) => {
                assert!(plain_authority(a.as_bytes()), "accepted {a:?}");
                assert_eq!(hosts, [a], "the Host forwarded is not the one routed on");
                let host = forwarded.host.as_deref().expect("a host name to route on");
                assert!(!host.bytes().any(|b| b.is_ascii_uppercase()), "{host:?}");
                assert_eq!(h.get("x-forwarded-host"), Some(a));
            }
            None => {
                assert!(hosts.is_empty(), "{hosts:?} without an authority");
                assert!(!h.contains_key("x-forwarded-host"));
            }
        }
        for name in HOP_BY_HOP {
            // HTTP2-Settings goes with a refused h2c upgrade; beside no
            // Upgrade, or an upgrade to something else that is tunnelled,
            // it goes on as sent: it upgrades nothing there, and looking
            // for it would cost every request a lookup.
            let alone = name == "http2-settings"
                && (!before.contains_key(header::UPGRADE) || forwarded.upgrade);
            if alone || (forwarded.upgrade && name == "upgrade") {
                continue;
            }
            assert!(!h.contains_key(name), "{name} forwarded");
        }
        // No h2c upgrade reaches a backend (h2c smuggling).
        for u in h.get_all(header::UPGRADE) {
            let h2c = u
                .to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")));
            assert!(!h2c, "Upgrade: {u:?} forwarded");
        }
        for te in h.get_all(header::TE) {
            assert!(
                te.as_bytes().eq_ignore_ascii_case(b"trailers"),
                "TE: {te:?} forwarded"
            );
        }
        let connection: Vec<&HeaderValue> = h.get_all(header::CONNECTION).iter().collect();
        if forwarded.upgrade {
            assert_eq!(connection, [&HeaderValue::from_static("upgrade")]);
        } else {
            assert!(
                connection.is_empty(),
                "Connection: {connection:?} forwarded"
            );
        }
        if before.contains_key(header::TRANSFER_ENCODING) {
            assert!(
                !h.contains_key(header::CONTENT_LENGTH),
                "a length beside a coding"
            );
        }
        let xff = h.get_all("x-forwarded-for").iter().collect::<Vec<_>>();
        assert_eq!(xff.len(), 1, "{xff:?}");
        assert!(xff[0].as_bytes().ends_with(b"192.0.2.77"), "{xff:?}");
        assert_eq!(
            h.get("x-forwarded-proto").map(|v| v.as_bytes()),
            Some(proto.as_bytes())
        );
        for on in [
            HashKey::ClientIp,
            HashKey::Header("x-user".into()),
            HashKey::Cookie("session".into()),
        ] {
            proxy_fuzz::request_key(&on, client, h);
        }
    }
}
