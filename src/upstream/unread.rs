//! A client's request fields that nothing in geolb reads, passed to the
//! backend as they came rather than put into the request's header map.
//!
//! A browser's request carries about fifteen fields; geolb reads four of
//! them (`Host`, `Connection`, `Accept-Encoding`, `Cookie`). Putting each
//! of the others into the map (a lookup of its name, a hash, an insert,
//! and its drop after) cost about 250 instructions a field. geolb's own
//! HTTP/1 server keeps these instead as places in the head it read, and
//! the backend's client writes them after the map's fields, before the
//! ones geolb adds ([`super::Added`], which carries them).
//!
//! Code that comes to read one of these names from a request must take it
//! out of what passes here: in [`UnreadNames::of_listener`] if a config
//! key makes it read, or out of [`UnreadName`] if it is always read.
//!
//! Only the names of [`UnreadName`] (in any case) are passed so, and only those a
//! listener's config does not read ([`UnreadNames::of_listener`]): a
//! header rule or a hashing key that names one, or an access log (which
//! logs `User-Agent` and `Referer`), keeps it in the map. A request whose
//! `Connection` names fields (to strip) gets them all in the map.

use bytes::{BufMut, Bytes};
use http::header::{self, HeaderMap, HeaderName};
use smallvec::SmallVec;

use super::parsed_value;
use crate::spares::{KEPT_MAX, Spares};

/// The names passed unread, when the config allows. None of them is read
/// anywhere in geolb but where the config names it (see the module's doc).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum UnreadName {
    Accept,
    AcceptLanguage,
    CacheControl,
    Pragma,
    UpgradeInsecureRequests,
    UserAgent,
    Referer,
    Origin,
    Dnt,
    Priority,
    IfNoneMatch,
    IfModifiedSince,
    SecChUa,
    SecChUaMobile,
    SecChUaPlatform,
    SecFetchSite,
    SecFetchMode,
    SecFetchUser,
    SecFetchDest,
    ContentType,
    Authorization,
}

/// Each [`UnreadName`]'s head line up to its value, by its number: one
/// copy where a name and `": "` were two.
static LINE_STARTS: [&[u8]; 21] = [
    b"accept: ",
    b"accept-language: ",
    b"cache-control: ",
    b"pragma: ",
    b"upgrade-insecure-requests: ",
    b"user-agent: ",
    b"referer: ",
    b"origin: ",
    b"dnt: ",
    b"priority: ",
    b"if-none-match: ",
    b"if-modified-since: ",
    b"sec-ch-ua: ",
    b"sec-ch-ua-mobile: ",
    b"sec-ch-ua-platform: ",
    b"sec-fetch-site: ",
    b"sec-fetch-mode: ",
    b"sec-fetch-user: ",
    b"sec-fetch-dest: ",
    b"content-type: ",
    b"authorization: ",
];

/// Each [`UnreadName`]'s header name, by its number.
static NAMES: [HeaderName; 21] = [
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::CACHE_CONTROL,
    header::PRAGMA,
    header::UPGRADE_INSECURE_REQUESTS,
    header::USER_AGENT,
    header::REFERER,
    header::ORIGIN,
    header::DNT,
    HeaderName::from_static("priority"),
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    HeaderName::from_static("sec-ch-ua"),
    HeaderName::from_static("sec-ch-ua-mobile"),
    HeaderName::from_static("sec-ch-ua-platform"),
    HeaderName::from_static("sec-fetch-site"),
    HeaderName::from_static("sec-fetch-mode"),
    HeaderName::from_static("sec-fetch-user"),
    HeaderName::from_static("sec-fetch-dest"),
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
];

impl UnreadName {
    pub const ALL: [UnreadName; 21] = [
        Self::Accept,
        Self::AcceptLanguage,
        Self::CacheControl,
        Self::Pragma,
        Self::UpgradeInsecureRequests,
        Self::UserAgent,
        Self::Referer,
        Self::Origin,
        Self::Dnt,
        Self::Priority,
        Self::IfNoneMatch,
        Self::IfModifiedSince,
        Self::SecChUa,
        Self::SecChUaMobile,
        Self::SecChUaPlatform,
        Self::SecFetchSite,
        Self::SecFetchMode,
        Self::SecFetchUser,
        Self::SecFetchDest,
        Self::ContentType,
        Self::Authorization,
    ];

    /// The name as a client sends it, in any case. Matched by its length,
    /// then by words of its bytes: a `match` on byte strings compared the
    /// candidates of a length one `memcmp` call each, two spellings apiece
    /// (39 instructions a name, by `benches/instructions.sh`).
    pub fn of(raw: &[u8]) -> Option<UnreadName> {
        let is = |lower: &'static [u8]| folded_eq(raw, lower);
        Some(match raw.len() {
            3 if is(b"dnt") => Self::Dnt,
            6 if is(b"accept") => Self::Accept,
            6 if is(b"pragma") => Self::Pragma,
            6 if is(b"origin") => Self::Origin,
            7 if is(b"referer") => Self::Referer,
            8 if is(b"priority") => Self::Priority,
            9 if is(b"sec-ch-ua") => Self::SecChUa,
            10 if is(b"user-agent") => Self::UserAgent,
            12 if is(b"content-type") => Self::ContentType,
            13 if is(b"cache-control") => Self::CacheControl,
            13 if is(b"if-none-match") => Self::IfNoneMatch,
            13 if is(b"authorization") => Self::Authorization,
            14 if folded_eq(&raw[..10], b"sec-fetch-") => {
                let last = &raw[10..];
                if folded_eq(last, b"mode") {
                    Self::SecFetchMode
                } else if folded_eq(last, b"site") {
                    Self::SecFetchSite
                } else if folded_eq(last, b"dest") {
                    Self::SecFetchDest
                } else if folded_eq(last, b"user") {
                    Self::SecFetchUser
                } else {
                    return None;
                }
            }
            15 if is(b"accept-language") => Self::AcceptLanguage,
            16 if is(b"sec-ch-ua-mobile") => Self::SecChUaMobile,
            17 if is(b"if-modified-since") => Self::IfModifiedSince,
            18 if is(b"sec-ch-ua-platform") => Self::SecChUaPlatform,
            25 if is(b"upgrade-insecure-requests") => Self::UpgradeInsecureRequests,
            _ => return None,
        })
    }

    pub fn header_name(self) -> &'static HeaderName {
        &NAMES[self as usize]
    }

    fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// Whether the field name `raw` is `lower` (lower-case letters, digits
/// and `-`) in any case. Each byte of a name as httparse admits it (a
/// token), set its bit 0x20, is its lower case: only upper-case letters
/// become letters so, and only control bytes (never in a name) become a
/// digit or `-`. So too for a field's value as httparse admits it: its
/// only control byte, tab, becomes `)`. Compared a word at
/// a time, the first and the last word overlapping where the length is
/// not a multiple of one; `lower` is a constant where it is inlined, so
/// the length's branches fold away.
#[inline(always)]
pub fn folded_eq(raw: &[u8], lower: &'static [u8]) -> bool {
    let n = lower.len();
    if raw.len() != n {
        return false;
    }
    let word8 =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    let word4 =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]));
    match n {
        0..4 => raw.iter().zip(lower).all(|(r, l)| r | 0x20 == *l),
        4..8 => {
            word4(raw, 0) | 0x2020_2020 == word4(lower, 0)
                && word4(raw, n - 4) | 0x2020_2020 == word4(lower, n - 4)
        }
        _ => {
            let mut at = 0;
            while at + 8 < n {
                if word8(raw, at) | 0x2020_2020_2020_2020 != word8(lower, at) {
                    return false;
                }
                at += 8;
            }
            word8(raw, n - 8) | 0x2020_2020_2020_2020 == word8(lower, n - 8)
        }
    }
}

/// A set of [`UnreadName`]s: those a listener lets pass unread, or those
/// a request passed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct UnreadNames(u32);

impl UnreadNames {
    pub const NONE: UnreadNames = UnreadNames(0);

    /// All names but those that `reads` names, and `User-Agent` and
    /// `Referer` where an access log logs them. `reads`: every request
    /// field name (any case) the listener's config reads or changes (header rules of
    /// the listener and its routes, the hashing keys of their pools).
    pub fn of_listener<'a>(
        access_log: bool,
        reads: impl IntoIterator<Item = &'a str>,
    ) -> UnreadNames {
        let mut names = UnreadNames(UnreadName::ALL.iter().fold(0, |m, n| m | n.bit()));
        if access_log {
            names.remove(UnreadName::UserAgent);
            names.remove(UnreadName::Referer);
        }
        for name in reads {
            if let Some(n) = UnreadName::of(name.as_bytes()) {
                names.remove(n);
            }
        }
        names
    }

    pub fn contains(self, name: UnreadName) -> bool {
        self.0 & name.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every name in `self` is in `other`.
    pub fn within(self, other: UnreadNames) -> bool {
        self.0 & !other.0 == 0
    }

    fn insert(&mut self, name: UnreadName) {
        self.0 |= name.bit();
    }

    fn remove(&mut self, name: UnreadName) {
        self.0 &= !name.bit();
    }
}

/// A request's unread fields: where their values are in the head it came
/// in, in the order they came, a name's together.
#[derive(Default)]
pub struct Unread {
    head: Bytes,
    fields: SmallVec<[(UnreadName, [u32; 2]); 16]>,
    names: UnreadNames,
}

thread_local! {
    /// [`Unread`]s done with, for the next requests parsed on this thread
    /// (about 250 bytes each).
    static SPARES: Spares<Unread, KEPT_MAX> = const { Spares::new() };
}

impl Unread {
    /// An empty one, for the fields of `head`.
    pub fn new(head: Bytes) -> Box<Unread> {
        let spare = Spares::take_from(&SPARES);
        let mut unread = spare.unwrap_or_default();
        unread.head = head;
        unread
    }

    /// The field whose value is `value` (offsets in the head) is `name`.
    /// A name's fields go together, where the first came, as a header map
    /// puts them (so hyper's clients, which send the map, send them alike).
    pub fn push(&mut self, name: UnreadName, value: [u32; 2]) {
        let apart = self.names.contains(name) && self.fields.last().is_some_and(|f| f.0 != name);
        if apart && let Some(last) = self.fields.iter().rposition(|f| f.0 == name) {
            self.fields.insert(last + 1, (name, value));
        } else {
            self.fields.push((name, value));
        }
        self.names.insert(name);
    }

    /// The names among the fields.
    pub fn names(&self) -> UnreadNames {
        self.names
    }

    /// Done with: kept for the next request parsed on this thread.
    pub fn recycle(mut self: Box<Self>) {
        self.head = Bytes::new();
        self.fields.clear();
        self.names = UnreadNames::NONE;
        Spares::keep_in(&SPARES, self);
    }

    /// The fields into `headers` (which holds none of their names), for
    /// whatever reads them there, or a client that sends the map.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        for &(name, [v0, v1]) in &self.fields {
            let value = parsed_value(self.head.slice(v0 as usize..v1 as usize));
            headers.append(name.header_name().clone(), value);
        }
    }

    /// Whether `headers` holds the fields already ([`Self::append_to`]):
    /// a request's map holds none of their names otherwise.
    pub fn is_in(&self, headers: &HeaderMap) -> bool {
        self.fields
            .first()
            .is_some_and(|(name, _)| headers.contains_key(name.header_name()))
    }

    /// The fields as head lines, names lower-case as a map's are. A value
    /// the client ended with CRLF is copied with it.
    pub fn write(&self, dst: &mut impl BufMut) {
        for &(name, [v0, v1]) in &self.fields {
            let (v0, v1) = (v0 as usize, v1 as usize);
            dst.put_slice(LINE_STARTS[name as usize]);
            match self.head.get(v1..v1 + 2) {
                Some(b"\r\n") => dst.put_slice(&self.head[v0..v1 + 2]),
                _ => {
                    dst.put_slice(&self.head[v0..v1]);
                    dst.put_slice(b"\r\n");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_is_its_header_name_in_any_case() {
        for name in UnreadName::ALL {
            let lower = name.header_name().as_str();
            assert_eq!(UnreadName::of(lower.as_bytes()), Some(name), "{lower}");
            assert_eq!(LINE_STARTS[name as usize], format!("{lower}: ").as_bytes());
            // The spelling clients send: each word capitalised, or as
            // browsers send the client hints.
            let capitalised: String = lower
                .split('-')
                .map(|w| {
                    let mut c = w.chars();
                    c.next().map_or_else(String::new, |f| {
                        f.to_ascii_uppercase().to_string() + c.as_str()
                    })
                })
                .collect::<Vec<_>>()
                .join("-");
            let sent = match name {
                UnreadName::Dnt => "DNT".to_owned(),
                UnreadName::SecChUa => "Sec-CH-UA".to_owned(),
                UnreadName::SecChUaMobile => "Sec-CH-UA-Mobile".to_owned(),
                UnreadName::SecChUaPlatform => "Sec-CH-UA-Platform".to_owned(),
                _ => capitalised,
            };
            assert_eq!(UnreadName::of(sent.as_bytes()), Some(name), "{sent}");
            assert_eq!(
                UnreadName::of(lower.to_ascii_uppercase().as_bytes()),
                Some(name)
            );
            assert_eq!(
                HeaderName::from_bytes(sent.as_bytes()).unwrap(),
                *name.header_name()
            );
        }
    }

    /// `folded_eq` answers as `eq_ignore_ascii_case` for every token of
    /// every length up to 40: the name itself in mixed case, and with any
    /// one byte changed to any other byte a name or a value may hold (a
    /// token's, and a value's tab, space and bytes of 0x80 and up).
    #[test]
    fn a_token_is_compared_as_eq_ignore_ascii_case_compares_it() {
        let held: Vec<u8> = (0u8..=255)
            .filter(|&b| {
                b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~\t ".contains(&b) || b >= 0x80
            })
            .collect();
        let lowers: Vec<u8> = b"abcdefghijklmnopqrstuvwxyz0123456789-".to_vec();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for len in 1..=40 {
            for _ in 0..20 {
                let lower: &'static [u8] = (0..len)
                    .map(|_| lowers[next(lowers.len())])
                    .collect::<Vec<u8>>()
                    .leak();
                let mixed: Vec<u8> = lower
                    .iter()
                    .map(|b| {
                        if next(2) == 0 {
                            b.to_ascii_uppercase()
                        } else {
                            *b
                        }
                    })
                    .collect();
                assert!(super::folded_eq(&mixed, lower), "{mixed:?}");
                for at in 0..len {
                    for &t in &held {
                        let mut name = mixed.clone();
                        name[at] = t;
                        assert_eq!(
                            super::folded_eq(&name, lower),
                            name.eq_ignore_ascii_case(lower),
                            "{name:?} against {lower:?}"
                        );
                    }
                }
                assert!(!super::folded_eq(&mixed[1..], lower));
            }
        }
    }

    /// Every byte a name may hold (a token's, as httparse admits them) in
    /// each place of each name: matched exactly when it is that place's
    /// letter in either case, or its `-`.
    #[test]
    fn names_match_in_any_case_and_nothing_else() {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        for name in UnreadName::ALL {
            let lower = name.header_name().as_str().as_bytes();
            for at in 0..lower.len() {
                for b in (0..=255u8).filter(|&b| token(b)) {
                    let mut raw = lower.to_vec();
                    raw[at] = b;
                    let same = b.eq_ignore_ascii_case(&lower[at]);
                    assert_eq!(
                        UnreadName::of(&raw) == Some(name),
                        same,
                        "{:?}",
                        String::from_utf8_lossy(&raw)
                    );
                }
            }
            assert_eq!(UnreadName::of(&lower[..lower.len() - 1]), None);
            assert_eq!(UnreadName::of(&[lower, b"x"].concat()), None);
        }
    }

    /// A tripwire: each use of a passed name's constant in `src/`, where
    /// it is and why it reads no client's request. A new one fails this
    /// until it is looked at: code that reads one of these names from a
    /// request must take the name out of what passes (the module's doc).
    #[test]
    fn every_use_of_a_passed_name_is_known() {
        let known: &[(&str, usize, &str)] = &[
            ("admin/auth.rs", 2, "the admin API's own server, and a test"),
            ("admin/mod.rs", 2, "the admin API's own answers"),
            ("control.rs", 1, "geolb's own request to the admin API"),
            (
                "proxy/compress.rs",
                2,
                "a response's Cache-Control: no-transform, its Content-Type",
            ),
            ("proxy/http.rs", 5, "geolb's own answers (no-store, types)"),
            (
                "proxy/http.rs",
                2,
                "the access log: User-Agent, Referer (of_listener)",
            ),
            ("proxy/h1.rs", 1, "a test"),
            ("proxy/ocsp/mod.rs", 2, "geolb's own OCSP request"),
            ("sticky.rs", 5, "a response's Cache-Control, and tests"),
            (
                "upstream/h1.rs",
                3,
                "may_be_trailer: a backend's trailers (two names)",
            ),
            (
                "upstream/h1.rs",
                2,
                "known_name: a name made once, for the map",
            ),
        ];
        let names = [
            "ACCEPT",
            "ACCEPT_LANGUAGE",
            "CACHE_CONTROL",
            "PRAGMA",
            "UPGRADE_INSECURE_REQUESTS",
            "USER_AGENT",
            "REFERER",
            "ORIGIN",
            "DNT",
            "IF_NONE_MATCH",
            "IF_MODIFIED_SINCE",
            "CONTENT_TYPE",
            "AUTHORIZATION",
        ];
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found: Vec<(String, usize)> = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(&src)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if rel == "upstream/unread.rs" || !rel.ends_with(".rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let uses = names
                    .iter()
                    .map(|n| {
                        let whole = format!("header::{n}");
                        text.match_indices(&whole)
                            .filter(|(at, _)| {
                                let next = text.as_bytes().get(at + whole.len());
                                !next.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
                            })
                            .count()
                    })
                    .sum::<usize>();
                if uses > 0 {
                    found.push((rel, uses));
                }
            }
        }
        found.sort();
        let mut want: Vec<(String, usize)> = Vec::new();
        for (file, n, _) in known {
            match want.iter_mut().find(|(f, _)| f == file) {
                Some((_, total)) => *total += n,
                None => want.push(((*file).to_owned(), *n)),
            }
        }
        want.sort();
        assert_eq!(
            found, want,
            "a use of a passed name's constant came or went: if it reads a client's \
             request, take the name out of what passes (upstream::unread), then update this list"
        );
    }

    #[test]
    fn a_listener_keeps_in_the_map_what_its_config_reads() {
        let all = UnreadNames::of_listener(false, []);
        assert!(UnreadName::ALL.iter().all(|&n| all.contains(n)));
        let logged = UnreadNames::of_listener(true, []);
        assert!(!logged.contains(UnreadName::UserAgent) && !logged.contains(UnreadName::Referer));
        assert!(logged.contains(UnreadName::Accept));
        let ruled = UnreadNames::of_listener(false, ["accept", "Sec-Fetch-Mode", "host"]);
        assert!(!ruled.contains(UnreadName::Accept) && !ruled.contains(UnreadName::SecFetchMode));
        assert!(ruled.contains(UnreadName::UserAgent));
    }

    #[test]
    fn fields_go_out_in_the_order_a_map_gives() {
        // A line ended by a bare LF, and a value with a space after it
        // (not part of the value): each written with CRLF.
        let head =
            Bytes::from_static(b"GET / HTTP/1.1\r\nAccept: */*\nDNT: 1 \r\nAccept: b\r\n\r\n");
        // The value of the field that reads `line`.
        let at = |line: &str| {
            let i = head
                .windows(line.len())
                .position(|w| w == line.as_bytes())
                .unwrap();
            let v = i + line.find(": ").unwrap() + 2;
            [v as u32, (i + line.len()) as u32]
        };
        let mut u = Unread::new(head.clone());
        u.push(UnreadName::Accept, at("Accept: */*"));
        u.push(UnreadName::Dnt, at("DNT: 1"));
        u.push(UnreadName::Accept, at("Accept: b"));
        let mut out = Vec::new();
        u.write(&mut out);
        assert_eq!(out, b"accept: */*\r\naccept: b\r\ndnt: 1\r\n");
        let mut map = HeaderMap::new();
        u.append_to(&mut map);
        let all: Vec<_> = map.get_all(header::ACCEPT).iter().collect();
        assert_eq!(all, ["*/*", "b"]);
        assert_eq!(map[header::DNT], "1");
        assert!(u.names().contains(UnreadName::Dnt) && !u.names().contains(UnreadName::Origin));
        assert!(u.is_in(&map) && !u.is_in(&HeaderMap::new()));
        u.recycle();
    }
}
