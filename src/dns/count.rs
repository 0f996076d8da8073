//! Counting answered queries: `geolb_dns_queries_total` by type and rcode
//! (unparsable messages answered FORMERR as `qtype="malformed"`),
//! `geolb_dns_geo_answers_total` by name and data center. Both transports
//! count through here, with counter handles resolved once.

use std::sync::OnceLock;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use hickory_server::server::Request;
use metrics::Counter;
use smallvec::SmallVec;

use super::DnsData;
use super::answer::Reply;
use crate::metrics::{DNS_GEO_ANSWERS, DNS_QUERIES};

/// Query types with their own label; the rest count as `other` so a client
/// cannot grow the label set.
const QTYPES: [(RecordType, &str); 15] = [
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
];

const RCODES: [(ResponseCode, &str); 7] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::BADVERS, "BADVERS"),
];

/// Counter handles by (qtype, rcode), the last of each being `other`,
/// resolved on first use.
static QUERY_COUNTERS: [[OnceLock<Counter>; RCODES.len() + 1]; QTYPES.len() + 1] =
    [const { [const { OnceLock::new() }; RCODES.len() + 1] }; QTYPES.len() + 1];

/// The `qtype` of messages answered FORMERR before a question could be read
/// (a header and then nothing parsable): not a query type, so not `other`.
pub(super) const MALFORMED: &str = "malformed";

static MALFORMED_COUNTER: OnceLock<Counter> = OnceLock::new();

/// Counts one message answered with a bare FORMERR header because it could
/// not be parsed: `qtype="malformed", rcode="FORMERR"`.
pub(super) fn count_malformed() {
    MALFORMED_COUNTER
        .get_or_init(|| metrics::counter!(DNS_QUERIES, "qtype" => MALFORMED, "rcode" => "FORMERR"))
        .increment(1);
}

pub(super) fn count(data: &DnsData, request: &Request, reply: &Reply) {
    let qtype = request.queries.queries().first().map(|q| q.query_type());
    count_answer(
        data,
        qtype,
        reply.metadata.response_code,
        reply.geo.as_ref(),
    );
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

/// `geolb_dns_queries_total` for one query.
fn count_query(qtype: Option<RecordType>, rcode: ResponseCode) {
    let qtype = qtype
        .and_then(|t| QTYPES.iter().position(|(known, _)| *known == t))
        .unwrap_or(QTYPES.len());
    let rcode = RCODES
        .iter()
        .position(|(known, _)| *known == rcode)
        .unwrap_or(RCODES.len());
    QUERY_COUNTERS[qtype][rcode]
        .get_or_init(|| {
            let qtype = QTYPES.get(qtype).map_or("other", |q| q.1);
            let rcode = RCODES.get(rcode).map_or("other", |r| r.1);
            metrics::counter!(DNS_QUERIES, "qtype" => qtype, "rcode" => rcode)
        })
        .increment(1);
}

/// `geolb_dns_geo_answers_total` for the data centers chosen for geo name
/// `index`.
fn count_geo(data: &DnsData, index: usize, chosen: &[usize]) {
    let geo = &data.compiled.geo[index];
    for dc in chosen {
        let Some(slot) = geo.candidates.iter().position(|c| c == dc) else {
            continue;
        };
        geo.counters[slot]
            .get_or_init(|| {
                metrics::counter!(
                    DNS_GEO_ANSWERS,
                    "name" => geo.name.to_ascii().trim_end_matches('.').to_owned(),
                    "datacenter" => data.compiled.datacenters[*dc].name.clone()
                )
            })
            .increment(1);
    }
}
