//! What a request must be before it is routed: a method geolb forwards,
//! one target authority and a path without dot segments, so that geolb
//! routes on what the backend receives. A request that fails is answered
//! by geolb and never forwarded.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode, Uri, Version};

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
/// authority over HTTP/1.1 or HTTP/2. `aside`: the request's one `Host`,
/// where its map does not hold it (`upstream::Added::host`). `seen`: an authority found valid
/// before on the connection, taken rather than copied when the target's is
/// the same. `known`: a `Host` found valid before on the connection, not
/// checked again when the same; a valid one becomes it.
pub fn authority<B>(
    req: &Request<B>,
    aside: Option<&HeaderValue>,
    seen: Option<&HeaderValue>,
    known: Option<&mut KnownHost>,
) -> Result<Option<HeaderValue>, Refusal> {
    let (host, more) = match aside {
        Some(h) => (Some(h), false),
        None => crate::upstream::first_field(req.headers(), &header::HOST),
    };
    if more {
        return Err(Refusal::bad("more than one Host header"));
    }
    if let Some(h) = host {
        let h = h.as_bytes();
        match known {
            Some(known) if known.is(h) => {}
            Some(known) if is_authority(h) => known.set(h),
            None if is_authority(h) => {}
            _ => return Err(Refusal::bad("the Host header is not a valid host[:port]")),
        }
    }
    if let Some(a) = req.uri().authority() {
        if let Some(seen) = seen.filter(|v| v.as_bytes() == a.as_str().as_bytes()) {
            return Ok(Some(seen.clone()));
        }
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

/// A `Host` value found valid on a connection, kept as bytes: its next
/// requests nearly all send the same, and the check of each byte (about
/// 100 instructions of an HTTP/1.1 request's 16,000,
/// `benches/instructions.sh`) is then a comparison. Not the field value
/// itself: that is a slice of the connection's read buffer, which could
/// then not be reused in place for the next head.
pub struct KnownHost {
    len: u8,
    bytes: [u8; KnownHost::ROOM],
}

impl Default for KnownHost {
    fn default() -> Self {
        KnownHost {
            len: 0,
            bytes: [0; KnownHost::ROOM],
        }
    }
}

impl KnownHost {
    /// Longer hosts are checked each time.
    const ROOM: usize = 63;

    fn is(&self, host: &[u8]) -> bool {
        // Nothing kept is no host, not the empty one.
        self.len != 0 && usize::from(self.len) == host.len() && self.bytes[..host.len()] == *host
    }

    fn set(&mut self, host: &[u8]) {
        match self.bytes.get_mut(..host.len()) {
            Some(room) if !host.is_empty() => {
                room.copy_from_slice(host);
                self.len = host.len() as u8;
            }
            _ => self.len = 0,
        }
    }
}

/// Refuses a path with a dot segment (`.` or `..`), also percent-encoded
/// (`%2e`), also when delimited by `\`, `%2f` or `%5c` rather than `/`, or
/// followed by `;` parameters (`..;`): each form that some backend resolves
/// to a parent. Clients remove dot segments before sending (RFC 3986
/// §5.2.4), so only crafted requests carry them; they would be routed by a
/// prefix (`/public/../admin` under `/public/`) that the backend, resolving
/// them, does not serve. Refusing rather than resolving means geolb and
/// every backend read the same segments (only unreserved characters are
/// decoded, by [`decode_unreserved`], which changes no segment's meaning).
pub fn path(path: &str) -> Result<CheckedPath, Refusal> {
    check_path(path.as_bytes())
}

fn check_path(path: &[u8]) -> Result<CheckedPath, Refusal> {
    // Nothing a dot segment begins with, `%` included: nothing encoded.
    if !may_have_dot_segment(path) {
        return Ok(CheckedPath {
            may_be_encoded: false,
        });
    }
    if dot_segment_in(path) {
        return Err(Refusal::bad("the path has a dot segment (. or ..)"));
    }
    Ok(CheckedPath {
        may_be_encoded: true,
    })
}

/// A path [`path`] let pass, with whether it may hold a `%`: most have
/// none, and [`decode_unreserved`] then has nothing to look for (about 3
/// instructions a byte of path, `benches/instructions.sh`).
#[must_use]
#[derive(Clone, Copy, Debug)]
pub struct CheckedPath {
    may_be_encoded: bool,
}

impl CheckedPath {
    /// [`decode_unreserved`] of `uri`, whose path this is.
    pub fn decode_unreserved(self, uri: &Uri) -> Option<Uri> {
        if self.may_be_encoded {
            decode_unreserved(uri)
        } else {
            None
        }
    }
}

/// Whether `path` has what a dot segment must begin with: a `%` (which
/// may encode a dot or a delimiter), or a `.` at the start or right after
/// `/` or `\`. Most paths have neither, and this finds so eight bytes at
/// a time, about five instructions a byte, where [`dot_segment_in`]
/// takes about 22: a request for a path of 34 bytes took 17,609
/// instructions with that alone, 17,053 with this first
/// (`URL_PATH=/static/js/app.3f9a2c1b.chunk.js benches/instructions.sh`).
fn may_have_dot_segment(path: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);
    // The top bit of each byte of `x` that is `b`, exactly (no borrow
    // runs from one byte into the next).
    let is = |x: u64, b: u8| {
        let t = x ^ (ONES * u64::from(b));
        !(((t & LOW7) + LOW7) | t | LOW7)
    };
    // The byte before the path counts as a delimiter.
    let mut after_delimiter = 0x80u64;
    let mut words = path.chunks_exact(8);
    for word in &mut words {
        let x = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let delimiters = is(x, b'/') | is(x, b'\\');
        // Each byte's flag moved to the byte after it (little-endian: the
        // next byte is the next higher one).
        let follows = (delimiters << 8) | after_delimiter;
        if is(x, b'%') | (is(x, b'.') & follows) != 0 {
            return true;
        }
        after_delimiter = delimiters >> 56;
    }
    let mut prev_delimiter = after_delimiter != 0;
    for &b in words.remainder() {
        if b == b'%' || (b == b'.' && prev_delimiter) {
            return true;
        }
        prev_delimiter = matches!(b, b'/' | b'\\');
    }
    false
}

fn dot_segment_in(path: &[u8]) -> bool {
    // Per segment: dots seen, and whether anything else was.
    let (mut dots, mut other, mut params) = (0u8, false, false);
    let mut i = 0;
    while i < path.len() {
        let mut b = path[i];
        if b == b'%'
            && let Some(&[h, l]) = path.get(i + 1..i + 3)
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            b = h << 4 | l;
            i += 2;
        }
        i += 1;
        match b {
            b'/' | b'\\' => {
                if !other && (1..=2).contains(&dots) {
                    return true;
                }
                (dots, other, params) = (0, false, false);
            }
            _ if params => {}
            b';' => params = true,
            b'.' => dots = dots.saturating_add(1),
            _ => other = true,
        }
    }
    !other && (1..=2).contains(&dots)
}

/// `uri` with the percent-encodings of unreserved characters in its path
/// decoded (`%70ublic` is `public`; RFC 3986 §6.2.2.2: equivalent, and
/// what backends resolve), or `None` when there are none: routing matches
/// path prefixes on the decoded path and the backend gets that same path,
/// so an encoding cannot send a request past a route. Other encodings
/// (`%2F`, `%25`, ...) stay as they are: decoding them changes meaning.
/// Run after [`path`], which refused encoded dot segments.
pub fn decode_unreserved(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    // The common case: one scan, no allocation.
    if !path.as_bytes().contains(&b'%') {
        return None;
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut changed = false;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(&[h, l]) = b.get(i + 1..i + 3)
            && let (Some(h), Some(l)) = (hex(h), hex(l))
            && let c = h << 4 | l
            && (c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'))
        {
            out.push(c);
            changed = true;
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    if !changed {
        return None;
    }
    if let Some(q) = uri.query() {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(out)).ok()?);
    Uri::from_parts(parts).ok()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `host[:port]`: a name of letters, digits, `-`, `.`, `_` and `~`, or an
/// IPv6 literal in brackets; at most five digits of port. Stricter than RFC
/// 3986's reg-name (no sub-delims, no percent-encoding, no user info): what
/// a DNS name or address needs and nothing a backend could read otherwise.
/// Every request pays for it: a table lookup per byte.
fn is_authority(bytes: &[u8]) -> bool {
    let end = if bytes.first() == Some(&b'[') {
        match ip_literal_len(bytes) {
            Some(end) => end,
            None => return false,
        }
    } else {
        // Eight bytes at a time without a branch each, then one by one.
        let mut end = 0;
        while let Some(chunk) = bytes.get(end..end + 8)
            && chunk
                .iter()
                .fold(true, |ok, &b| ok & NAME_BYTE[usize::from(b)])
        {
            end += 8;
        }
        while end < bytes.len() && NAME_BYTE[usize::from(bytes[end])] {
            end += 1;
        }
        end
    };
    if end == 0 {
        return false;
    }
    match bytes[end..].split_first() {
        None => true,
        Some((b':', port)) => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// The length of `[...]` at the start of `bytes`, if it holds an IPv6
/// address's characters.
fn ip_literal_len(bytes: &[u8]) -> Option<usize> {
    let close = bytes.iter().position(|&b| b == b']')?;
    let inside = &bytes[1..close];
    (!inside.is_empty()
        && inside
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.'))
    .then_some(close + 1)
}

/// The bytes of a host name: letters, digits, `-`, `.`, `_`, `~`.
static NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    table
};

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
    fn dot_segments() {
        for bad in [
            "/..",
            "/.",
            "/public/../admin",
            "/public/./admin",
            "/public/..",
            "/public/%2e%2e/admin",
            "/public/%2E./admin",
            "/public/.%2e",
            "/public/..%2fadmin",
            "/public/..%2Fadmin",
            "/public/..%5cadmin",
            "/public/..\\admin",
            "/public\\..\\admin",
            "/public/..;/admin",
            "/public/..;jsessionid=x/admin",
            "..",
        ] {
            assert!(check_path(bad.as_bytes()).is_err(), "{bad}");
        }
        for good in [
            "/",
            "*",
            "/public/file.txt",
            "/public/.well-known/x",
            "/public/a..b",
            "/public/...",
            "/public/..a",
            "/public/%2e%2e%2e",
            "/public/x;..",
            "/public/%zz/..x",
            "/public/%2",
            "/%",
        ] {
            assert!(check_path(good.as_bytes()).is_ok(), "{good}");
        }
    }

    /// The word-at-a-time scan only ever lets through what the byte by byte one
    /// finds nothing in: random paths of the bytes that matter.
    #[test]
    fn the_quick_scan_passes_only_paths_without_dot_segments() {
        // A dot and a slash with the top bit set too: they match neither.
        const BYTES: &[u8] = b"/\\.%2eEfF5c;ax\xae\xaf";
        let mut rng = fastrand::Rng::with_seed(0x646f_7473);
        let mut passed = 0;
        for _ in 0..crate::proptest_cases(200_000) {
            let len = rng.usize(0..40);
            let path: Vec<u8> = (0..len).map(|_| BYTES[rng.usize(..BYTES.len())]).collect();
            if !may_have_dot_segment(&path) {
                passed += 1;
                assert!(!dot_segment_in(&path), "{}", String::from_utf8_lossy(&path));
                // What `path` then says: nothing encoded to decode.
                assert!(!path.contains(&b'%'), "{}", String::from_utf8_lossy(&path));
            }
            assert_eq!(
                check_path(&path).is_err(),
                dot_segment_in(&path),
                "{}",
                String::from_utf8_lossy(&path)
            );
        }
        assert!(
            passed > 0,
            "the quick scan passed no path: the test tested nothing"
        );
    }

    #[test]
    fn unreserved_encodings_are_decoded_and_nothing_else() {
        let d = |s: &str| decode_unreserved(&s.parse::<Uri>().unwrap()).map(|u| u.to_string());
        assert_eq!(d("/%70ublic/x").as_deref(), Some("/public/x"));
        assert_eq!(d("/%70ublic/x?a=%70").as_deref(), Some("/public/x?a=%70"));
        assert_eq!(d("/%41%7e%2D%5f%2e").as_deref(), Some("/A~-_."));
        assert_eq!(
            d("http://a.test/%70ublic").as_deref(),
            Some("http://a.test/public")
        );
        // Reserved and other characters keep their encoding.
        assert_eq!(d("/public/a%2Fb%25%20%3F"), None);
        assert_eq!(d("/public/x"), None);
        assert_eq!(d("/%zz%4"), None);
        assert_eq!(d("/%2F%70").as_deref(), Some("/%2Fp"));
        // Once is enough: what comes out has no unreserved encoding left.
        assert_eq!(d("/%2570ublic").as_deref(), None);
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
        let got = |r: Request<()>| {
            authority(&r, None, None, None).map(|v| v.map(|v| v.to_str().unwrap().to_owned()))
        };
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
                authority(&refused, None, None, None)
                    .map(|_| ())
                    .unwrap_err()
                    .status,
                StatusCode::BAD_REQUEST,
                "{refused:?}"
            );
        }
    }

    #[test]
    fn an_authority_seen_before_is_taken_only_when_the_same_and_host_is_checked_anyway() {
        let seen = HeaderValue::from_static("a.test:8443");
        let target = req(Version::HTTP_2, "https://a.test:8443/", &[]);
        let got = authority(&target, None, Some(&seen), None)
            .unwrap()
            .unwrap();
        assert_eq!(got, seen);
        assert_eq!(
            got.as_bytes().as_ptr(),
            seen.as_bytes().as_ptr(),
            "the seen value is shared, not copied"
        );
        let other = req(Version::HTTP_2, "https://a.test/", &[]);
        assert_eq!(
            authority(&other, None, Some(&seen), None).unwrap().unwrap(),
            "a.test"
        );
        let bad_host = req(Version::HTTP_2, "https://a.test:8443/", &["x, y"]);
        assert_eq!(
            authority(&bad_host, None, Some(&seen), None)
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn a_known_host_skips_its_check_and_no_other() {
        let mut known = KnownHost::default();
        let with = |host: &str, known: &mut KnownHost| {
            authority(
                &req(Version::HTTP_11, "/", &[host]),
                None,
                None,
                Some(known),
            )
            .map(|v| v.map(|v| v.to_str().unwrap().to_owned()))
        };
        assert_eq!(
            with("a.test:8443", &mut known).unwrap().as_deref(),
            Some("a.test:8443")
        );
        assert!(known.is(b"a.test:8443"), "a valid host is kept");
        assert_eq!(
            with("a.test:8443", &mut known).unwrap().as_deref(),
            Some("a.test:8443")
        );
        for bad in ["a.test:8443@h", "a.test:844300", "x, y", "", "a.test:8443 "] {
            assert!(with(bad, &mut known).is_err(), "{bad:?}");
            assert!(known.is(b"a.test:8443"), "a refused host is not kept");
        }
        let twice = req(Version::HTTP_11, "/", &["a.test:8443", "a.test:8443"]);
        assert!(authority(&twice, None, None, Some(&mut known)).is_err());
        assert_eq!(
            with("b.test", &mut known).unwrap().as_deref(),
            Some("b.test")
        );
        assert!(known.is(b"b.test") && !known.is(b"a.test:8443"));
        // Too long to keep: checked each time, and the one kept let go.
        let long = "a".repeat(KnownHost::ROOM + 1);
        assert!(with(&long, &mut known).is_ok());
        assert!(!known.is(b"b.test") && !known.is(long.as_bytes()));
        let empty = KnownHost::default();
        assert!(!empty.is(b""), "nothing is known at first");
    }

    /// One random Host value, authority or path: random bytes, name bytes,
    /// IPv6 literals, ports, percent-encodings, dot segments, and very
    /// long strings.
    fn random_text(rng: &mut fastrand::Rng) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b".",
            b"..",
            b"/",
            b"\\",
            b"%2e",
            b"%2E",
            b"%2f",
            b"%5c",
            b"%",
            b"%z",
            b";",
            b":",
            b"@",
            b",",
            b" ",
            b"\t",
            b"[",
            b"]",
            b"::1",
            b"a.example",
            b"80",
            b"65535",
            b"123456",
            b"-",
            b"_",
            b"~",
            b"?",
            b"#",
            b"\r\n",
            b"\xc3\xa9",
            b"\xff",
            b"user:pw@",
        ];
        let mut out = Vec::new();
        let len = if rng.u8(0..50) == 0 {
            rng.usize(1000..20_000)
        } else {
            rng.usize(0..24)
        };
        while out.len() < len {
            match rng.u8(0..4) {
                0 => out.push(rng.u8(..)),
                1 => out.push(*rng.choice(b"abcxyz0129-._~:[]").unwrap()),
                _ => out.extend_from_slice(rng.choice(PIECES).unwrap()),
            }
        }
        out
    }

    /// The property test (README "Tests"): random Host values, request
    /// targets and paths never panic, and whatever is accepted as an
    /// authority is ASCII `host[:port]` without `@`, `/`, `,` or
    /// whitespace.
    #[test]
    fn proptest_request_heads() {
        let cases = crate::proptest_cases(100_000);
        let seed = 0x6874_7470_5f68_6f73u64;
        let mut rng = fastrand::Rng::with_seed(seed);
        let started = std::time::Instant::now();
        let plain = |v: &[u8]| {
            v.is_ascii()
                && !v
                    .iter()
                    .any(|b| matches!(b, b'@' | b'/' | b',') || b.is_ascii_whitespace())
        };
        let (mut hosts_ok, mut targets_ok) = (0usize, 0usize);
        // As a connection keeps it: the last valid host of those before.
        let mut known = KnownHost::default();
        for i in 0..cases {
            let text = random_text(&mut rng);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = path(&String::from_utf8_lossy(&text));
                let _ = check_path(&text);
                let mut results = Vec::new();
                // As a Host header, alone or beside an authority-form target.
                if let Ok(host) = HeaderValue::from_bytes(&text) {
                    for (version, uri) in [
                        (Version::HTTP_11, "/"),
                        (Version::HTTP_2, "/"),
                        (Version::HTTP_10, "/"),
                        (Version::HTTP_11, "http://a.test/"),
                    ] {
                        let mut r = Request::builder()
                            .version(version)
                            .uri(uri)
                            .body(())
                            .unwrap();
                        r.headers_mut().insert(header::HOST, host.clone());
                        let afresh = authority(&r, None, None, None);
                        let as_known = authority(&r, None, None, Some(&mut known));
                        assert_eq!(
                            afresh.as_ref().ok(),
                            as_known.as_ref().ok(),
                            "a known host changed the outcome"
                        );
                        results.push((false, afresh));
                    }
                }
                // As the target URI's authority (what http's parser lets by).
                let mut target = b"http://".to_vec();
                target.extend_from_slice(&text);
                target.extend_from_slice(b"/x");
                if let Ok(uri) = http::Uri::try_from(target) {
                    let r = Request::builder()
                        .version(Version::HTTP_2)
                        .uri(uri)
                        .body(())
                        .unwrap();
                    results.push((true, authority(&r, None, None, None)));
                }
                results
            }));
            let Ok(results) = outcome else {
                panic!("input {i} (seed {seed:#x}) panicked: {text:02x?}");
            };
            for (from_target, result) in results {
                if let Ok(Some(v)) = result {
                    let v = v.as_bytes();
                    if from_target {
                        targets_ok += 1;
                    } else if v != b"a.test" {
                        hosts_ok += 1;
                    }
                    assert!(
                        plain(v) && is_authority(v),
                        "input {i} (seed {seed:#x}): accepted {:?}",
                        String::from_utf8_lossy(v)
                    );
                    // host[:port]: at most one ':' outside brackets, digits after it.
                    let host_end = if v.first() == Some(&b'[') {
                        v.iter().position(|&b| b == b']').unwrap() + 1
                    } else {
                        v.iter().position(|&b| b == b':').unwrap_or(v.len())
                    };
                    assert!(host_end > 0, "{v:?}");
                    if let Some((&colon, port)) = v[host_end..].split_first() {
                        assert_eq!(colon, b':', "{v:?}");
                        assert!(port.len() <= 5 && port.iter().all(u8::is_ascii_digit));
                    }
                }
            }
        }
        eprintln!(
            "proptest_request_heads: {cases} inputs ({hosts_ok} Host and {targets_ok} target authorities accepted) in {:?}",
            started.elapsed()
        );
    }
}
