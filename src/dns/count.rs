//! Counting answered queries: `geolb_dns_queries_total` by type and rcode
//! (unparsable messages answered FORMERR as `qtype="malformed"`),
//! `geolb_dns_geo_answers_total` by name and data center. Both transports
//! count through here, with counter handles resolved once.
//!
//! Every (qtype, rcode) pair is created at 0 with the first DNS data, so a
//! first SERVFAIL is a rate change rather than a series appearing. The geo
//! answers are not in the recorder: their counts live in a registry held
//! by the DNS data that names them, so a reload that removes a geo name or
//! a data center removes its series ([`render_geo_answers`]).
//!
//! By protocol, truncation and latency ([`render_transport`]) are counted
//! where answers leave: per batch on UDP (one `recvmmsg` to one
//! `sendmmsg`: two clock reads and a few atomic adds for up to 32
//! answers), per message on TCP. Every answer of a UDP batch leaves with
//! the same `sendmmsg`, so the batch's time is each of its answers' time
//! in the daemon (the receive call aside); queries with ECS are counted
//! with their qtype, one relaxed add when present.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_server::server::Request;
use metrics::Counter;
use smallvec::SmallVec;

use super::DnsData;
use super::answer::Reply;
use crate::metrics::{
    Count, DNS_ANSWER_BUCKETS, DNS_ANSWER_DURATION, DNS_ECS_QUERIES, DNS_GEO_ANSWERS,
    DNS_PACKET_CACHE, DNS_QUERIES, DNS_QUERIES_BY_PROTOCOL, DNS_TRUNCATED, Histogram, escape_label,
    family,
};

/// Query types with their own label; the rest count as `other` so a client
/// cannot grow the label set.
const QTYPES: [(RecordType, &str); 17] = [
    (RecordType::A, "A"),
    (RecordType::AAAA, "AAAA"),
    (RecordType::CNAME, "CNAME"),
    (RecordType::MX, "MX"),
    (RecordType::NS, "NS"),
    (RecordType::SOA, "SOA"),
    (RecordType::TXT, "TXT"),
    (RecordType::SRV, "SRV"),
    (RecordType::CAA, "CAA"),
    (RecordType::ANY, "ANY"),
    (RecordType::PTR, "PTR"),
    (RecordType::DS, "DS"),
    (RecordType::DNSKEY, "DNSKEY"),
    (RecordType::HTTPS, "HTTPS"),
    (RecordType::SVCB, "SVCB"),
    (RecordType::AXFR, "AXFR"),
    (RecordType::IXFR, "IXFR"),
];

const RCODES: [(ResponseCode, &str); 8] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::BADVERS, "BADVERS"),
    (ResponseCode::NotAuth, "NOTAUTH"),
];

/// Counter handles by (qtype, rcode), the last of each being `other`,
/// resolved on first use.
static QUERY_COUNTERS: [[OnceLock<Counter>; RCODES.len() + 1]; QTYPES.len() + 1] =
    [const { [const { OnceLock::new() }; RCODES.len() + 1] }; QTYPES.len() + 1];

/// The `qtype` of messages answered FORMERR before a question could be read
/// (a header and then nothing parsable): not a query type, so not `other`.
pub(super) const MALFORMED: &str = "malformed";

static MALFORMED_COUNTER: OnceLock<Counter> = OnceLock::new();

/// Counts one message answered with FORMERR because hickory-proto could
/// not be parsed: `qtype="malformed", rcode="FORMERR"`.
pub(super) fn count_malformed() {
    MALFORMED_COUNTER
        .get_or_init(|| metrics::counter!(DNS_QUERIES, "qtype" => MALFORMED, "rcode" => "FORMERR"))
        .increment(1);
}

/// What an answered query adds to the counters, but for the data centers
/// a geo answer chose: what a reused reply is counted as again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tally {
    qtype: Option<RecordType>,
    rcode: ResponseCode,
    /// The answer echoes the option whenever the query had a valid one.
    ecs: bool,
    /// The geo name asked for: its data centers are chosen for each client.
    pub geo_name: Option<usize>,
}

impl Tally {
    pub(super) fn of(request: &Request, reply: &Reply) -> Tally {
        Tally {
            qtype: request.queries.queries().first().map(|q| q.query_type()),
            rcode: reply.metadata.response_code,
            ecs: reply
                .edns
                .as_ref()
                .is_some_and(|e| e.option(EdnsCode::Subnet).is_some()),
            geo_name: reply.geo.as_ref().map(|(index, _)| *index),
        }
    }

    pub(super) fn count(self, data: &DnsData, geo: Option<&(usize, SmallVec<[usize; 4]>)>) {
        count_ecs(self.ecs);
        count_answer(data, self.qtype, self.rcode, geo);
    }
}

/// Counts one answered query: its type and rcode, and for address queries
/// to a geo name, the data centers chosen (`geo`).
pub(super) fn count_answer(
    data: &DnsData,
    qtype: Option<RecordType>,
    rcode: ResponseCode,
    geo: Option<&(usize, SmallVec<[usize; 4]>)>,
) {
    count_query(qtype, rcode);
    if let (Some((index, chosen)), Some(RecordType::A | RecordType::AAAA | RecordType::ANY)) =
        (geo, qtype)
    {
        count_geo(data, *index, chosen);
    }
}

/// Whether DNS has been configured: the families below are rendered from
/// then on (a daemon without `[dns]` has no DNS series).
static IN_SERVICE: AtomicBool = AtomicBool::new(false);
/// Answers sent over UDP, over TCP; truncated; queries with ECS.
static UDP: Count = Count::new();
static TCP: Count = Count::new();
static TRUNCATED: Count = Count::new();
static ECS: Count = Count::new();
static CACHE_HITS: Count = Count::new();
static CACHE_MISSES: Count = Count::new();
static ANSWER_DURATION: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(DNS_ANSWER_BUCKETS));

/// One query that carried ECS (`ecs`), counted.
pub(super) fn count_ecs(ecs: bool) {
    if ecs {
        ECS.add(1);
    }
}

/// Whether `reply` (a DNS message) has TC set.
pub(super) fn truncated(reply: &[u8]) -> bool {
    reply.get(2).is_some_and(|flags| flags & 0x02 != 0)
}

/// A UDP batch: `answers` sent, `truncated` of them with TC, `elapsed`
/// from their receipt to the send call's return.
pub(super) fn count_udp_batch(answers: usize, truncated: usize, elapsed: Duration) {
    if answers == 0 {
        return;
    }
    UDP.add(answers as u64);
    TRUNCATED.add(truncated as u64);
    ANSWER_DURATION.observe_n(elapsed, answers as u64);
}

/// What a UDP thread's packet cache answered (`hits`) and left to the
/// general path (`misses`) since last counted: added per batch, not per
/// query, as the other UDP counts are.
pub(super) fn count_packet_cache(hits: u64, misses: u64) {
    if hits > 0 {
        CACHE_HITS.add(hits);
    }
    if misses > 0 {
        CACHE_MISSES.add(misses);
    }
}

/// One answer sent over TCP (`reply`), `elapsed` after its query was read.
pub(super) fn count_tcp(reply: &[u8], elapsed: Duration) {
    TCP.add(1);
    TRUNCATED.add(u64::from(truncated(reply)));
    ANSWER_DURATION.observe(elapsed);
}

/// The protocol, truncation, ECS and latency families, once DNS has been
/// configured.
pub fn render_transport(out: &mut String) {
    if !IN_SERVICE.load(Ordering::Relaxed) {
        return;
    }
    family(
        out,
        DNS_QUERIES_BY_PROTOCOL,
        "counter",
        "DNS answers sent, by protocol (udp, tcp).",
    );
    for (protocol, n) in [("udp", &UDP), ("tcp", &TCP)] {
        let _ = writeln!(
            out,
            "{DNS_QUERIES_BY_PROTOCOL}{{protocol=\"{protocol}\"}} {}",
            n.get()
        );
    }
    type Family = (&'static str, &'static str, &'static Count);
    let families: [Family; 2] = [
        (
            DNS_TRUNCATED,
            "DNS answers sent with TC set (too big for the client's UDP payload size).",
            &TRUNCATED,
        ),
        (
            DNS_ECS_QUERIES,
            "DNS queries that carried an EDNS Client Subnet option.",
            &ECS,
        ),
    ];
    for (name, help, n) in families {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", n.get());
    }
    family(
        out,
        DNS_PACKET_CACHE,
        "counter",
        "UDP packets the fast path left: answered from the packet cache (hit), or left to the general path (miss).",
    );
    for (result, n) in [("hit", &CACHE_HITS), ("miss", &CACHE_MISSES)] {
        let _ = writeln!(out, "{DNS_PACKET_CACHE}{{result=\"{result}\"}} {}", n.get());
    }
    family(
        out,
        DNS_ANSWER_DURATION,
        "histogram",
        "Time from a DNS query's receipt to its answer's sending (UDP: per receive batch, see the README).",
    );
    ANSWER_DURATION.render_unlabelled(out, DNS_ANSWER_DURATION);
}

/// `geolb_dns_queries_total` for one query.
fn count_query(qtype: Option<RecordType>, rcode: ResponseCode) {
    let qtype = qtype
        .and_then(|t| QTYPES.iter().position(|(known, _)| *known == t))
        .unwrap_or(QTYPES.len());
    let rcode = RCODES
        .iter()
        .position(|(known, _)| *known == rcode)
        .unwrap_or(RCODES.len());
    query_counter(qtype, rcode).increment(1);
}

/// Counts a zone transfer answered by `transfer` (NOERROR).
pub(super) fn count_transfer_query(qtype: RecordType) {
    count_query(Some(qtype), ResponseCode::NoError);
}

/// The counter of (`QTYPES[qtype]`, `RCODES[rcode]`), `other` past the end.
fn query_counter(qtype: usize, rcode: usize) -> &'static Counter {
    QUERY_COUNTERS[qtype][rcode].get_or_init(|| {
        let qtype = QTYPES.get(qtype).map_or("other", |q| q.1);
        let rcode = RCODES.get(rcode).map_or("other", |r| r.1);
        metrics::counter!(DNS_QUERIES, "qtype" => qtype, "rcode" => rcode)
    })
}

/// Creates every DNS series `data` can produce at 0: each (qtype, rcode),
/// the malformed one, and each (geo name, candidate data center). Called
/// when the data comes into service (after the recorder is installed).
pub fn register_series(data: &DnsData) {
    IN_SERVICE.store(true, Ordering::Relaxed);
    for qtype in 0..=QTYPES.len() {
        for rcode in 0..=RCODES.len() {
            query_counter(qtype, rcode).increment(0);
        }
    }
    MALFORMED_COUNTER
        .get_or_init(|| metrics::counter!(DNS_QUERIES, "qtype" => MALFORMED, "rcode" => "FORMERR"))
        .increment(0);
    for geo in &data.compiled.geo {
        for (slot, &dc) in geo.candidates.iter().enumerate() {
            geo_counter(data, geo, slot, dc);
        }
    }
}

type GeoKey = (String, String);

/// Geo answer counts by (name, data center), alive while some DNS data
/// names the pair: shared across reloads that keep it.
fn geo_registry() -> &'static Mutex<HashMap<GeoKey, Weak<Count>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<GeoKey, Weak<Count>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn geo_counter<'a>(
    data: &DnsData,
    geo: &'a super::geo::GeoName,
    slot: usize,
    dc: usize,
) -> &'a Counter {
    geo.counters[slot].get_or_init(|| {
        let key = (
            geo.name.to_ascii().trim_end_matches('.').to_owned(),
            data.compiled.datacenters[dc].name.clone(),
        );
        let mut registry = crate::locked(geo_registry());
        registry.retain(|_, weak| weak.strong_count() > 0);
        let count = registry.get(&key).and_then(Weak::upgrade);
        let count = count.unwrap_or_else(|| {
            let fresh = Arc::new(Count::default());
            registry.insert(key, Arc::downgrade(&fresh));
            fresh
        });
        count.counter()
    })
}

/// The `geolb_dns_geo_answers_total` family: the pairs that DNS data in
/// service (or still answering a query) names.
pub fn render_geo_answers(out: &mut String) {
    let mut live: Vec<(GeoKey, u64)> = crate::locked(geo_registry())
        .iter()
        .filter_map(|(key, weak)| Some((key.clone(), weak.upgrade()?.get())))
        .collect();
    live.sort();
    family(
        out,
        DNS_GEO_ANSWERS,
        "counter",
        "Answers for geo names, by name and chosen data center (A, AAAA and ANY queries).",
    );
    for ((name, dc), n) in live {
        let _ = writeln!(
            out,
            "{DNS_GEO_ANSWERS}{{name=\"{}\",datacenter=\"{}\"}} {n}",
            escape_label(&name),
            escape_label(&dc)
        );
    }
}

/// `geolb_dns_geo_answers_total` for the data centers chosen for geo name
/// `index`.
fn count_geo(data: &DnsData, index: usize, chosen: &[usize]) {
    let geo = &data.compiled.geo[index];
    for &dc in chosen {
        let Some(slot) = geo.candidates.iter().position(|&c| c == dc) else {
            continue;
        };
        geo_counter(data, geo, slot, dc).increment(1);
    }
}
