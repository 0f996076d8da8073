//! Response rate limiting over UDP (RRL, as BIND's `rate-limit`, NSD's
//! and Knot's `rrl`): a reflection attack sends queries with a victim's
//! address as their source, so what is limited is the responses to one
//! client network for one answer. Past the rate, responses are dropped,
//! but every `slip`-th goes out empty with TC so that a real client in
//! that network retries over TCP, which is never limited (nor are clients
//! presenting a valid server cookie: their address is not spoofed).
//!
//! The table is a fixed array of buckets shared by the UDP threads; a key
//! hashes to one and keys that collide share it (as NSD's and Knot's
//! tables do), so memory is bounded and nothing is allocated per query.
//! Each bucket is a GCRA token bucket: the time at which it will next be
//! empty, advanced by `1 / rate` per response sent.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Name;
use metrics::Counter;

use crate::config::RrlConfig;
use crate::metrics::DNS_RRL;

/// Buckets in the table: 2 MiB. A flood of many keys makes a legitimate
/// key share a bucket with one of them with probability (keys flooded /
/// buckets); NSD's default is a million buckets, Knot's 393,241.
const BUCKETS: usize = 1 << 17;
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// What a response is limited as (BIND's categories, less referrals,
/// which geolb never gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Category {
    /// NOERROR, with answers or not: per name (a wildcard's owner for its
    /// answers) and type.
    Answer = 0,
    /// Per zone, so that random names in one zone count together.
    NxDomain = 1,
    /// FORMERR, REFUSED and the rest: one key per client network.
    Error = 2,
}

/// The answer a response carries, hashed, and whether the query carried
/// a valid server cookie (never limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Class {
    hash: u64,
    pub exempt: bool,
}

impl Class {
    /// `name` is the lower-case wire form of the query's name (NOERROR) or
    /// of the zone (NXDOMAIN); ignored, like `qtype`, for errors.
    pub(super) fn new(category: Category, name: &[u8], qtype: u16) -> Class {
        let mut hasher = foldhash::fast::FixedState::default().build_hasher();
        hasher.write_u8(category as u8);
        if category != Category::Error {
            hasher.write(name);
        }
        if category == Category::Answer {
            hasher.write_u16(qtype);
        }
        Class {
            hash: hasher.finish(),
            exempt: false,
        }
    }

    /// A response with `rcode` to a question for `qname` (when one was
    /// read; the wildcard's owner for a wildcard answer) in `zone`
    /// (NXDOMAIN's SOA owner).
    pub(super) fn of_response(
        rcode: ResponseCode,
        qname: Option<&Name>,
        qtype: u16,
        zone: Option<&Name>,
    ) -> Class {
        let mut buffer = [0u8; 256];
        match (rcode, qname, zone) {
            (ResponseCode::NoError, Some(name), _) => {
                Class::new(Category::Answer, lower_wire(name, &mut buffer), qtype)
            }
            (ResponseCode::NXDomain, _, Some(zone)) => {
                Class::new(Category::NxDomain, lower_wire(zone, &mut buffer), 0)
            }
            _ => Class::error(),
        }
    }

    pub(super) fn error() -> Class {
        Class::new(Category::Error, &[], 0)
    }

    pub(super) fn exempt(self, exempt: bool) -> Class {
        Class { exempt, ..self }
    }
}

/// `name` in lower-case wire form, as the fast path keys it.
fn lower_wire<'b>(name: &Name, buffer: &'b mut [u8; 256]) -> &'b [u8] {
    let mut at = 0;
    for label in name.iter() {
        // A name is at most 255 octets, the root's included.
        let Some(out) = buffer.get_mut(at..at + 1 + label.len()) else {
            break;
        };
        out[0] = label.len() as u8;
        out[1..].copy_from_slice(label);
        out[1..].make_ascii_lowercase();
        at += 1 + label.len();
    }
    if at < buffer.len() {
        buffer[at] = 0;
        at += 1;
    }
    &buffer[..at]
}

/// `[dns.rrl]` as the limiter uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Settings {
    /// Nanoseconds per response at the rate; 0: no limit.
    interval: u64,
    /// How far ahead of now a bucket may run: one second's responses.
    burst: u64,
    slip: u32,
    v4_mask: u32,
    v6_mask: u128,
}

impl Settings {
    pub(super) fn new(config: &RrlConfig) -> Settings {
        let rate = u64::from(config.responses_per_second);
        let interval = NANOS_PER_SECOND.checked_div(rate).unwrap_or(0);
        Settings {
            interval,
            burst: interval * rate.saturating_sub(1),
            slip: config.slip,
            v4_mask: u32::MAX
                .checked_shl(32 - u32::from(config.ipv4_prefix_length))
                .unwrap_or(0),
            v6_mask: u128::MAX
                .checked_shl(128 - u32::from(config.ipv6_prefix_length))
                .unwrap_or(0),
        }
    }

    /// Whether responses are limited at all.
    pub(super) fn is_on(&self) -> bool {
        self.interval != 0
    }

    /// The client network of `ip`, with its family.
    fn network(&self, ip: IpAddr) -> u128 {
        // On a dual-stack socket IPv4 clients arrive as ::ffff:a.b.c.d,
        // all inside one /56: they are masked as IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4) & self.v4_mask) | 1 << 127,
            IpAddr::V6(v6) => u128::from(v6) & self.v6_mask,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::new(&RrlConfig::default())
    }
}

/// What to do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Send,
    /// Send it emptied, with TC.
    Slip,
    Drop,
}

#[derive(Default)]
#[repr(align(16))]
struct Bucket {
    /// When the bucket will be empty (GCRA's theoretical arrival time), in
    /// nanoseconds since the table's epoch.
    empty_at: AtomicU64,
    /// Responses limited, for the slip count.
    limited: AtomicU32,
}

/// The buckets every UDP thread of the server shares (atomics, no lock).
pub(super) struct Table {
    buckets: Box<[Bucket]>,
    epoch: Instant,
    hasher: foldhash::fast::RandomState,
}

impl Default for Table {
    fn default() -> Self {
        Table::with_buckets(BUCKETS)
    }
}

impl Table {
    fn with_buckets(n: usize) -> Table {
        debug_assert!(n.is_power_of_two());
        Table {
            buckets: (0..n).map(|_| Bucket::default()).collect(),
            epoch: Instant::now(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The time `check` takes, read once per batch of datagrams.
    pub(super) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Whether the response of `class` to `ip` at `now` goes out.
    pub(super) fn check(&self, settings: &Settings, ip: IpAddr, class: Class, now: u64) -> Verdict {
        if !settings.is_on() || class.exempt {
            return Verdict::Send;
        }
        let mut hasher = self.hasher.build_hasher();
        hasher.write_u128(settings.network(ip));
        hasher.write_u64(class.hash);
        let bucket = &self.buckets[hasher.finish() as usize & (self.buckets.len() - 1)];
        // A load and a store, not a compare-and-swap: threads racing on one
        // bucket may each send, which errs by at most one response per
        // UDP thread.
        let empty_at = bucket.empty_at.load(Ordering::Relaxed).max(now);
        if empty_at - now <= settings.burst {
            bucket
                .empty_at
                .store(empty_at + settings.interval, Ordering::Relaxed);
            return Verdict::Send;
        }
        let limited = bucket
            .limited
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if settings.slip != 0 && limited.is_multiple_of(settings.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

/// Applies `verdict` to `reply`: false when it is not to be sent; a slip
/// keeps the header (with TC, counts zeroed but the question's) and the
/// question only.
pub(super) fn apply(verdict: Verdict, reply: &mut Vec<u8>) -> bool {
    match verdict {
        Verdict::Send => return true,
        Verdict::Drop => {
            counter(&DROPPED, "dropped").increment(1);
            return false;
        }
        Verdict::Slip => counter(&SLIPPED, "slipped").increment(1),
    }
    let questions = reply
        .get(4..6)
        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
    let end = match questions {
        1 => question_end(reply),
        _ => None,
    };
    let Some(end) = end.or_else(|| (reply.len() >= 12).then_some(12)) else {
        return false;
    };
    reply.truncate(end);
    reply[2] |= 0x02;
    let counts: [u8; 8] = [0, u8::from(end > 12), 0, 0, 0, 0, 0, 0];
    reply[4..12].copy_from_slice(&counts);
    true
}

/// The end of a reply's one question: an uncompressed name (the first
/// name of a message has nothing to point back to), type and class.
fn question_end(reply: &[u8]) -> Option<usize> {
    let mut at = 12;
    loop {
        let len = *reply.get(at)?;
        if len > 63 {
            return None;
        }
        at += 1 + usize::from(len);
        if len == 0 {
            break;
        }
    }
    (at + 4 <= reply.len()).then_some(at + 4)
}

static DROPPED: OnceLock<Counter> = OnceLock::new();
static SLIPPED: OnceLock<Counter> = OnceLock::new();

fn counter(cell: &'static OnceLock<Counter>, action: &'static str) -> &'static Counter {
    cell.get_or_init(|| metrics::counter!(DNS_RRL, "action" => action))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: u32, slip: u32) -> Settings {
        Settings::new(&RrlConfig {
            responses_per_second: rate,
            slip,
            ..RrlConfig::default()
        })
    }

    const SECOND: u64 = NANOS_PER_SECOND;

    /// Responses sent, slipped and dropped of `n` at `now`.
    fn burst(
        table: &Table,
        s: &Settings,
        ip: &str,
        class: Class,
        now: u64,
        n: usize,
    ) -> [usize; 3] {
        let mut out = [0; 3];
        for _ in 0..n {
            match table.check(s, ip.parse().unwrap(), class, now) {
                Verdict::Send => out[0] += 1,
                Verdict::Slip => out[1] += 1,
                Verdict::Drop => out[2] += 1,
            }
        }
        out
    }

    #[test]
    fn a_burst_of_one_seconds_responses_then_the_rate() {
        let table = Table::with_buckets(1024);
        let s = settings(100, 2);
        let class = Class::new(Category::Answer, b"\x03api\x00", 1);
        // A full bucket: 100 at once, then half of the rest slipped.
        assert_eq!(
            burst(&table, &s, "192.0.2.1", class, SECOND, 300),
            [100, 100, 100]
        );
        // Refilled at 100 a second: 10 ms later one more.
        assert_eq!(
            burst(&table, &s, "192.0.2.1", class, SECOND + SECOND / 100, 3)[0],
            1
        );
        // Half a second later, 50.
        let later = SECOND + SECOND / 100 + SECOND / 2;
        assert_eq!(burst(&table, &s, "192.0.2.1", class, later, 200)[0], 50);
        // Idle for long, full again (never more than one second's worth).
        assert_eq!(
            burst(&table, &s, "192.0.2.1", class, 100 * SECOND, 300)[0],
            100
        );
    }

    #[test]
    fn networks_answers_and_cookies_are_separate() {
        let table = Table::with_buckets(1 << 16);
        let s = settings(10, 0);
        let api = Class::new(Category::Answer, b"\x03api\x00", 1);
        assert_eq!(burst(&table, &s, "192.0.2.1", api, SECOND, 20), [10, 0, 10]);
        // Same /24: the same bucket.
        assert_eq!(burst(&table, &s, "192.0.2.200", api, SECOND, 5), [0, 0, 5]);
        // Another /24, another type, another name: their own.
        assert_eq!(burst(&table, &s, "192.0.3.1", api, SECOND, 20)[0], 10);
        let aaaa = Class::new(Category::Answer, b"\x03api\x00", 28);
        assert_eq!(burst(&table, &s, "192.0.2.1", aaaa, SECOND, 20)[0], 10);
        // IPv6 by /56.
        assert_eq!(burst(&table, &s, "2001:db8:0:1::1", api, SECOND, 20)[0], 10);
        assert_eq!(burst(&table, &s, "2001:db8:0:ff::2", api, SECOND, 5)[0], 0);
        assert_eq!(
            burst(&table, &s, "2001:db8:0:100::1", api, SECOND, 20)[0],
            10
        );
        // IPv4 clients of a dual-stack socket: by their IPv4 /24.
        assert_eq!(
            burst(&table, &s, "::ffff:198.51.100.1", api, SECOND, 20),
            [10, 0, 10]
        );
        assert_eq!(burst(&table, &s, "198.51.100.9", api, SECOND, 5)[0], 0);
        assert_eq!(
            burst(&table, &s, "::ffff:198.51.101.1", api, SECOND, 20)[0],
            10
        );
        // A valid cookie: never limited.
        assert_eq!(
            burst(&table, &s, "192.0.2.1", api.exempt(true), SECOND, 50)[0],
            50
        );
    }

    #[test]
    fn slip_ratios_and_off() {
        for (slip, expect) in [
            (0, [5, 0, 100]),
            (1, [5, 100, 0]),
            (2, [5, 50, 50]),
            (4, [5, 25, 75]),
        ] {
            let table = Table::with_buckets(64);
            let class = Class::error();
            let got = burst(&table, &settings(5, slip), "192.0.2.1", class, SECOND, 105);
            assert_eq!(got, expect, "slip {slip}");
        }
        let table = Table::with_buckets(64);
        assert_eq!(
            burst(
                &table,
                &settings(0, 2),
                "192.0.2.1",
                Class::error(),
                0,
                10_000
            )[0],
            10_000
        );
    }

    #[test]
    fn classes_of_the_general_path_match_the_fast_paths() {
        let name = Name::from_ascii("API.MySite.com.").unwrap();
        let fast = Class::new(Category::Answer, b"\x03api\x06mysite\x03com\x00", 1);
        assert_eq!(
            Class::of_response(ResponseCode::NoError, Some(&name), 1, None),
            fast
        );
        // NXDOMAIN by zone, whatever the name.
        let zone = Name::from_ascii("mysite.com.").unwrap();
        let other = Name::from_ascii("x.mysite.com.").unwrap();
        assert_eq!(
            Class::of_response(ResponseCode::NXDomain, Some(&name), 1, Some(&zone)),
            Class::of_response(ResponseCode::NXDomain, Some(&other), 28, Some(&zone)),
        );
        assert_eq!(
            Class::of_response(ResponseCode::Refused, Some(&name), 1, None),
            Class::error()
        );
    }

    #[test]
    fn a_slip_keeps_header_and_question_with_tc() {
        let mut reply = vec![0x12, 0x34, 0x84, 0x00, 0, 1, 0, 2, 0, 0, 0, 1];
        reply.extend_from_slice(b"\x03api\x00\x00\x01\x00\x01");
        let question_end = reply.len();
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        assert!(apply(Verdict::Slip, &mut reply));
        assert_eq!(reply.len(), question_end);
        assert_eq!(
            &reply[..12],
            &[0x12, 0x34, 0x86, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        let mut header_only = vec![0x12, 0x34, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(apply(Verdict::Slip, &mut header_only));
        assert_eq!(header_only[2], 0x83);
        assert!(!apply(Verdict::Drop, &mut header_only));
    }
}
