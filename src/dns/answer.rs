//! One query in, one reply out: a pure function of the [`DnsData`] and the
//! request, so every rule is testable without sockets.

use std::net::IpAddr;

use hickory_proto::ProtoError;
use hickory_proto::op::{
    Edns, Header, LowerQuery, Metadata, OpCode, ResponseCode, emit_message_parts,
};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::tsig::{TSIG, TsigError, make_tsig_record};
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use smallvec::SmallVec;

use super::DnsData;
use super::geo::{self, Ranking};
use super::tsig::{self, Check};
use super::zone::{Found, Zone, Zones};
use super::{cookie, dnssec, ecs};
use crate::geoip::Location;

/// The UDP payload geolb answers within and advertises: the DNS flag day
/// 2020 size, which avoids IP fragmentation on common paths.
pub(crate) const MAX_UDP_PAYLOAD: u16 = 1232;
/// RFC 1035 §4.2.1: UDP without EDNS.
pub(crate) const PLAIN_UDP_PAYLOAD: u16 = 512;
/// Extended DNS Error option (RFC 8914), and the codes given.
const OPTION_EDE: u16 = 15;
const EDE_PROHIBITED: u16 = 18;
const EDE_NOT_AUTHORITATIVE: u16 = 20;
/// CNAME hops followed inside our zones (a loop ends where it comes back;
/// a longer chain is cut here).
const MAX_CHAIN: usize = 8;

/// A reply ready to encode (`encode_sized` fits it to its transport).
#[derive(Debug)]
pub(crate) struct Reply {
    pub metadata: Metadata,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    /// Addresses of in-zone NS, MX and SRV targets, whole RRsets in order
    /// (dropped from the end when the reply would not fit).
    pub additionals: Vec<Record>,
    /// The TSIG RR of an unsigned error answer to a signed query (BADKEY,
    /// BADSIG).
    pub tsig: Option<Record<TSIG>>,
    /// How to sign the answer to a query signed with one of our keys.
    pub sign: Option<Signing>,
    /// Present when the query had EDNS.
    pub edns: Option<Edns>,
    /// The geo name answered and the data centers chosen, for metrics.
    pub geo: Option<(usize, SmallVec<[usize; 4]>)>,
    /// The query presented a valid server cookie (exempt from RRL).
    pub valid_cookie: bool,
    /// The wildcard's owner when the query's name matched one: what RRL
    /// counts the answer as, so random names under it count together.
    pub wildcard: Option<Name>,
    /// The same query bytes (but for the id) get these same reply bytes
    /// until the config changes: no geo decision went into them (one made
    /// for `geo` is only counted), no cookie, no TSIG and no signature
    /// (each depends on the client or the time).
    pub reusable: bool,
}

impl Reply {
    /// A reply to a query of `metadata` without records, NOERROR; with an
    /// OPT when the query had one (`dnssec_ok`: its DO bit, which RFC 3225
    /// §3 has copied into the reply's).
    pub(crate) fn empty(metadata: &Metadata, dnssec_ok: Option<bool>) -> Reply {
        Reply {
            metadata: Metadata::response_from_request(metadata),
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            tsig: None,
            sign: None,
            edns: dnssec_ok.map(|dnssec_ok| {
                let mut edns = Edns::new();
                edns.set_max_payload(MAX_UDP_PAYLOAD);
                edns.set_dnssec_ok(dnssec_ok);
                edns
            }),
            geo: None,
            valid_cookie: false,
            wildcard: None,
            reusable: false,
        }
    }
}

/// The TSIG an answer gets, appended once it is encoded.
#[derive(Debug)]
pub(crate) struct Signing {
    pub signed: tsig::Signed,
    pub time: u64,
    pub error: Option<TsigError>,
    pub other: Vec<u8>,
}

/// Where the client is, as far as the query tells.
pub(super) struct Client {
    pub src: IpAddr,
    pub ecs: Option<ecs::ClientSubnet>,
}

/// The outcome of looking a name up in the zones.
struct Resolution {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    /// ECS scope when the answer depends on the location.
    scope: Option<u8>,
    geo: Option<(usize, SmallVec<[usize; 4]>)>,
    /// The wildcard's owner (`*.…`) when the query's name matched one.
    wildcard: Option<Name>,
    /// The name a negative answer is about, for its NSEC in a signed zone.
    denied: Option<Denied>,
    /// With `geo`: the reply is the same whatever the decision (which is
    /// still made, for the counters).
    same_everywhere: bool,
}

/// What a negative answer denies: a name (`types` None) or the other
/// types at it.
struct Denied {
    name: Name,
    types: Option<SmallVec<[RecordType; 8]>>,
}

impl Resolution {
    fn new(rcode: ResponseCode, authoritative: bool) -> Resolution {
        Resolution {
            rcode,
            authoritative,
            answers: Vec::new(),
            authorities: Vec::new(),
            scope: None,
            geo: None,
            wildcard: None,
            denied: None,
            same_everywhere: false,
        }
    }

    /// NOERROR without answers for this name (NODATA); RFC 2308 §2.2.
    /// `types`: those the name has (the one asked for is left out).
    fn no_data(
        &mut self,
        zone: &Zone,
        name: &LowerName,
        qtype: RecordType,
        types: impl IntoIterator<Item = RecordType>,
    ) {
        self.authorities.push(zone.negative_soa.clone());
        self.denied = Some(Denied {
            name: Name::from(name),
            types: Some(types.into_iter().filter(|t| *t != qtype).collect()),
        });
    }
}

/// Answers `request`, whatever its size; with the NSID option (RFC 5001
/// §2.2) whatever the rcode when it asked for one, as Knot does.
pub(crate) fn build(data: &DnsData, request: &Request) -> Reply {
    let mut reply = respond(data, request);
    if request
        .edns
        .as_ref()
        .is_some_and(|e| e.option(EdnsCode::NSID).is_some())
    {
        data.compiled.identity.add_nsid(&mut reply);
    }
    reply
}

fn respond(data: &DnsData, request: &Request) -> Reply {
    let dnssec_ok = request.edns.as_ref().map(|e| e.flags().dnssec_ok);
    let mut reply = Reply::empty(&request.metadata, dnssec_ok);
    let code = |mut reply: Reply, rcode| {
        reply.metadata.response_code = rcode;
        reply
    };
    let now = tsig::now();
    match tsig::check(&data.compiled.keys, request.as_slice(), now) {
        Check::Unsigned => {}
        // RFC 8945 §5.1: the TSIG RR must be the last record.
        Check::Misplaced => return code(reply, ResponseCode::FormErr),
        // §5.2.1 and §5.2.2: NOTAUTH, unsigned, with a TSIG RR of the
        // error and no MAC.
        Check::UnknownKey(key, tsig) => {
            reply.tsig = Some(unsigned_error(key, &tsig, TsigError::BadKey));
            return code(reply, ResponseCode::NotAuth);
        }
        Check::BadSig(key, tsig) => {
            reply.tsig = Some(unsigned_error(key, &tsig, TsigError::BadSig));
            return code(reply, ResponseCode::NotAuth);
        }
        // §5.2.3: NOTAUTH, signed, our time in Other Data.
        Check::BadTime(signed) => {
            reply.sign = Some(Signing {
                time: signed.time,
                signed,
                error: Some(TsigError::BadTime),
                other: tsig::time_other(now),
            });
            return code(reply, ResponseCode::NotAuth);
        }
        Check::Valid(signed) => {
            reply.sign = Some(Signing {
                signed,
                time: now,
                error: None,
                other: Vec::new(),
            })
        }
    }
    if request.metadata.op_code != OpCode::Query {
        return code(reply, ResponseCode::NotImp);
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return code(reply, ResponseCode::BADVERS);
    }
    let options = match request.edns {
        Some(_) => match ecs::options(request.as_slice()) {
            Ok(options) => options,
            Err(malformed) => {
                tracing::debug!(src = %request.src(), reason = malformed.0, "FORMERR");
                return code(reply, ResponseCode::FormErr);
            }
        },
        None => ecs::Options::default(),
    };
    if let (Some(presented), Some(edns)) = (options.cookie, reply.edns.as_mut()) {
        // RFC 7873 §5.2: a fresh server cookie whatever the one presented;
        // a wrong or stale one is answered normally, only not trusted.
        let (secret, ip, now) = (
            &data.compiled.cookie_secret,
            request.src().ip(),
            cookie::unix_now(),
        );
        reply.valid_cookie = cookie::is_valid(secret, &presented, ip, now);
        let answer = cookie::answer(secret, &presented.client, ip, now);
        edns.options_mut()
            .insert(EdnsOption::Unknown(cookie::OPTION_COOKIE, answer.to_vec()));
    }
    let query = match request.queries.queries() {
        [query] => query,
        // RFC 7873 §5.4: a query of only a COOKIE asks for a server cookie.
        [] if options.cookie.is_some() => return reply,
        _ => return code(reply, ResponseCode::FormErr),
    };
    let client = Client {
        src: request.src().ip(),
        ecs: options.ecs,
    };
    let transfer = matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR);
    let resolution = match (query.query_class(), query.query_type()) {
        // RFC 6895 §3.1: TYPE0 is reserved, so no query can ask for it.
        (_, RecordType::OPT | RecordType::ZERO) => return code(reply, ResponseCode::FormErr),
        // Zone transfers are not offered.
        _ if transfer => Resolution::new(ResponseCode::Refused, false),
        // Every zone here is of class IN, so QCLASS ANY (RFC 1035 §3.2.5)
        // asks for exactly the IN data, as Knot and BIND answer it.
        (DNSClass::IN | DNSClass::ANY, qtype) => resolve(data, query.name(), qtype, &client),
        (DNSClass::CH, qtype) => chaos(data, query.name(), qtype),
        _ => Resolution::new(ResponseCode::Refused, false),
    };
    reply.metadata.response_code = resolution.rcode;
    reply.metadata.authoritative = resolution.authoritative;
    reply.answers = resolution.answers;
    reply.authorities = resolution.authorities;
    let (additionals, additional_geo) = additionals(data, &reply.answers, &client);
    reply.additionals = additionals;
    // The message is cached under one scope: the narrowest (longest) of
    // every geo decision in it.
    let scope = resolution.scope.max(additional_geo.scope);
    let signs = dnssec_ok == Some(true) && resolution.authoritative;
    reply.reusable = (resolution.geo.is_none() || resolution.same_everywhere)
        && !additional_geo.decided
        && reply.sign.is_none()
        && options.cookie.is_none()
        && !(signs && data.compiled.zones.iter().any(|z| z.signer.is_some()));
    if signs {
        sign(
            &data.compiled.zones,
            &mut reply,
            resolution.denied,
            dnssec::unix_now(),
        );
    }
    // RFC 4343 §4.1: owners that are the query's name keep its spelling
    // (resolvers randomising case compare it), and so compress to the
    // question's name.
    let spelled = query.original().name();
    for record in reply.answers.iter_mut().chain(&mut reply.authorities) {
        if record.name == *spelled && !record.name.eq_case(spelled) {
            record.name = spelled.clone();
        }
    }
    reply.geo = resolution.geo;
    reply.wildcard = resolution.wildcard;
    if let (Some(ecs), Some(edns)) = (client.ecs, reply.edns.as_mut()) {
        // RFC 7871 §7.2.1: FAMILY, SOURCE PREFIX and ADDRESS as received.
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                ecs.addr,
                ecs.source_prefix,
                scope.unwrap_or(0),
            )));
    }
    if let (ResponseCode::Refused, Some(edns)) = (resolution.rcode, reply.edns.as_mut()) {
        // RFC 8914 §4.19 and §4.21: why, for the resolver's logs; a
        // CHAOS name configured to give nothing is refused by policy too.
        let withheld = query.query_class() == DNSClass::CH
            && data.compiled.identity.chaos_text(query.name()) == Some(None);
        let reason = if transfer || withheld {
            EDE_PROHIBITED
        } else {
            EDE_NOT_AUTHORITATIVE
        };
        edns.options_mut().insert(EdnsOption::Unknown(
            OPTION_EDE,
            reason.to_be_bytes().to_vec(),
        ));
    }
    reply
}

/// RFC 4035 §3.1: the RRSIGs of every RRset from a signed zone, after it;
/// for a negative answer the NSEC of compact denial (RFC 9824), which
/// answers NOERROR where the name does not exist (its NSEC says NXNAME).
fn sign(zones: &Zones, reply: &mut Reply, denied: Option<Denied>, now: u64) {
    if let Some(denied) = denied
        && let Some(zone) = zones.zone_for(&LowerName::from(&denied.name))
        && let Some(signer) = &zone.signer
    {
        let types = denied
            .types
            .unwrap_or_else(|| SmallVec::from_slice(&[dnssec::NXNAME]));
        let ttl = zone.negative_soa.ttl;
        if let Some(nsec) = signer.denial(&denied.name, ttl, types) {
            reply.authorities.push(nsec);
            if reply.metadata.response_code == ResponseCode::NXDomain {
                reply.metadata.response_code = ResponseCode::NoError;
            }
        }
    }
    for section in [
        &mut reply.answers,
        &mut reply.authorities,
        &mut reply.additionals,
    ] {
        *section = signed(zones, std::mem::take(section), now);
    }
}

/// `records` (whole RRsets, each together) with the RRSIGs of those from
/// signed zones after each RRset.
fn signed(zones: &Zones, records: Vec<Record>, now: u64) -> Vec<Record> {
    let mut out = Vec::with_capacity(records.len() * 2);
    let mut rest = &records[..];
    while let Some(first) = rest.first() {
        let n = rest
            .iter()
            .take_while(|r| r.record_type() == first.record_type() && r.name == first.name)
            .count();
        let (set, tail) = rest.split_at(n);
        out.extend_from_slice(set);
        let zone = zones.zone_for(&LowerName::from(&first.name));
        if let Some(signer) = zone.and_then(|z| z.signer.as_ref()) {
            out.extend(signer.sign(set, now));
        }
        rest = tail;
    }
    out
}

/// The TSIG RR of an unsigned error answer: the request's fields, no MAC.
fn unsigned_error(key: Name, tsig: &TSIG, error: TsigError) -> Record<TSIG> {
    let rdata = TSIG::new(
        tsig.algorithm.clone(),
        tsig.time,
        tsig.fudge,
        Vec::new(),
        tsig.oid,
        Some(error),
        Vec::new(),
    );
    make_tsig_record(key, rdata)
}

/// The largest response the client takes over `request`'s transport.
pub(crate) fn limit(request: &Request) -> usize {
    match request.protocol() {
        Protocol::Udp => udp_limit(request.edns.as_ref().map(Edns::max_payload)),
        _ => u16::MAX,
    }
    .into()
}

/// The largest UDP response for a client advertising `edns_size` (None:
/// no EDNS).
pub(crate) fn udp_limit(edns_size: Option<u16>) -> u16 {
    edns_size.map_or(PLAIN_UDP_PAYLOAD, |size| {
        size.clamp(PLAIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
    })
}

/// Appends `reply` to `bytes` within `max` bytes. The question is written
/// anew (original case), so answer names are compressed against it. A
/// record that does not fit is left out and the header gets TC.
pub(crate) fn encode_into(
    reply: &Reply,
    questions: &[LowerQuery],
    max: u16,
    bytes: &mut Vec<u8>,
) -> Result<Header, ProtoError> {
    let mut encoder = BinEncoder::new(bytes);
    encoder.set_max_size(max);
    let question = match questions {
        [query] => Some(query.original().name()),
        _ => None,
    };
    emit_message_parts(
        &reply.metadata,
        &mut questions.iter().map(LowerQuery::original),
        &mut section(&reply.answers, question).iter(),
        &mut section(&reply.authorities, question).iter(),
        &mut section(&reply.additionals, question).iter(),
        reply.edns.as_ref(),
        reply.tsig.as_ref(),
        &mut encoder,
    )
}

/// A compression pointer to the question's name, right after the header.
const QUESTION_POINTER: u16 = 0xc000 | 12;

/// A record whose owner, when it is the question's name spelled alike,
/// is written as a pointer to it, as the fast path writes it: hickory-proto
/// compresses only the first 120 names of a message, so records past them
/// in a large (TCP) answer would carry the whole name.
struct Owned<'r> {
    record: &'r Record,
    at_question: bool,
}

fn section<'r>(records: &'r [Record], question: Option<&Name>) -> SmallVec<[Owned<'r>; 8]> {
    records
        .iter()
        .map(|record| Owned {
            record,
            at_question: question.is_some_and(|q| record.name.eq_case(q)),
        })
        .collect()
}

impl BinEncodable for Owned<'_> {
    fn emit(&self, encoder: &mut BinEncoder<'_>) -> Result<(), ProtoError> {
        let record = self.record;
        if !self.at_question {
            return record.emit(encoder);
        }
        encoder.emit_u16(QUESTION_POINTER)?;
        record.record_type().emit(encoder)?;
        record.dns_class.emit(encoder)?;
        encoder.emit_u32(record.ttl)?;
        let place = encoder.place::<u16>()?;
        record.data.emit(encoder)?;
        let len = encoder.len_since_place(&place);
        // A record's data is under 64 KiB: the encoder's size is.
        place.replace(encoder, len as u16)
    }
}

/// `reply` sized for `request`'s transport, into `bytes` (cleared first):
/// whole if it fits (over UDP the client's size, over TCP 64 KiB), else
/// without the additional RRsets that do not fit (RFC 2181 §9: no TC for
/// them), else without its NSID option, else with no records and TC,
/// keeping the question and OPT (with ECS) so a UDP client retries over
/// TCP; a reply that cannot be encoded at all becomes SERVFAIL.
pub(crate) fn encode_sized(mut reply: Reply, request: &Request, bytes: &mut Vec<u8>) {
    let sign = reply.sign.take();
    let room = sign.as_ref().map_or(0, |s| s.signed.size());
    encode_within(
        reply,
        request.queries.queries(),
        limit(request).saturating_sub(room) as u16,
        bytes,
    );
    if let Some(s) = sign {
        let chain = tsig::Chain::Answer(&s.signed.mac);
        tsig::sign(bytes, &s.signed.key, chain, s.time, s.error, s.other);
    }
}

/// [`encode_sized`] for `questions` within `max` bytes.
pub(crate) fn encode_within(
    mut reply: Reply,
    questions: &[LowerQuery],
    max: u16,
    bytes: &mut Vec<u8>,
) {
    loop {
        bytes.clear();
        match encode_into(&reply, questions, max, bytes) {
            Ok(header) if !header.metadata.truncation => return,
            // Additional records crowding out the OPT fail the encoding.
            _ if pop_rrset(&mut reply.additionals) => continue,
            // RFC 5001 §2.2 leaves honouring NSID to the server: a whole
            // answer without it beats TC and a retry over TCP.
            _ if take_nsid(&mut reply) => continue,
            Ok(_) => reply.metadata.truncation = true,
            Err(error) => {
                crate::log_limited!(warn, %error, "cannot encode a DNS reply");
                reply.metadata.response_code = ResponseCode::ServFail;
            }
        }
        break;
    }
    reply.answers.clear();
    reply.authorities.clear();
    bytes.clear();
    if let Err(error) = encode_into(&reply, questions, max, bytes) {
        // Only a question too large for the client's size gets here.
        tracing::debug!(%error, "cannot encode even an empty DNS reply");
        bytes.clear();
        let header = Header {
            metadata: {
                let mut m = reply.metadata;
                m.response_code = ResponseCode::ServFail;
                m
            },
            counts: Default::default(),
        };
        let mut encoder = BinEncoder::new(bytes);
        let _ = header.emit(&mut encoder);
    }
}

/// Removes the NSID option from `reply`; false when it had none.
fn take_nsid(reply: &mut Reply) -> bool {
    let Some(options) = reply.edns.as_mut().map(Edns::options_mut) else {
        return false;
    };
    let had = options.get(EdnsCode::NSID).is_some();
    options.remove(EdnsCode::NSID);
    had
}

/// Removes the last RRset of `records`; false when there was none.
fn pop_rrset(records: &mut Vec<Record>) -> bool {
    let Some(last) = records.pop() else {
        return false;
    };
    while records
        .last()
        .is_some_and(|r| r.record_type() == last.record_type() && r.name == last.name)
    {
        records.pop();
    }
    true
}

/// RFC 1034 §4.3.2 step 6: the A and AAAA RRsets of the names that NS, MX
/// and SRV `answers` point to, when our zones hold them (a name elsewhere
/// is the resolver's to look up); a geo name's are ranked for `client`
/// as its own answer would be. With what geo decisions were made.
fn additionals(data: &DnsData, answers: &[Record], client: &Client) -> (Vec<Record>, GeoDecided) {
    let zones = &data.compiled.zones;
    let mut found = Vec::new();
    let mut geo = GeoDecided::default();
    let mut seen: SmallVec<[&Name; 4]> = SmallVec::new();
    for record in answers {
        let target = match &record.data {
            RData::NS(ns) => &ns.0,
            RData::MX(mx) => &mx.exchange,
            RData::SRV(srv) => &srv.target,
            _ => continue,
        };
        if seen.contains(&target) {
            continue;
        }
        seen.push(target);
        let target = LowerName::from(target);
        let Some(zone) = zones.zone_for(&target) else {
            continue;
        };
        match zone.find(&target) {
            Found::Node {
                node,
                wildcard: false,
            } => {
                for rtype in [RecordType::A, RecordType::AAAA] {
                    if let Some(set) = node.get(rtype) {
                        found.extend(set.records.iter().cloned());
                    }
                }
            }
            Found::Geo { index, .. } => {
                let (ranking, geo_scope) = decide(data, index, client);
                geo.decided = true;
                geo.scope = geo.scope.max(geo_scope);
                for rtype in [RecordType::A, RecordType::AAAA] {
                    found.extend(geo_records(data, index, &ranking, rtype));
                }
            }
            _ => {}
        }
    }
    (found, geo)
}

/// Whether the additional section depends on where the client is.
#[derive(Default)]
struct GeoDecided {
    decided: bool,
    /// The ECS scope of those decisions (None: none, or no ECS).
    scope: Option<u8>,
}

/// The TXT answer to a CHAOS-class query: for `id.server`,
/// `hostname.bind` and `version.bind` when configured, TTL 0 (as Knot
/// and BIND) and AA (as BIND, answering from its built-in CHAOS zone);
/// ANY gets the TXT (as BIND; Knot refuses it). Anything else is REFUSED,
/// as Knot refuses it.
fn chaos(data: &DnsData, qname: &LowerName, qtype: RecordType) -> Resolution {
    match data.compiled.identity.chaos_text(qname) {
        Some(Some(text)) if matches!(qtype, RecordType::TXT | RecordType::ANY) => {
            let mut res = Resolution::new(ResponseCode::NoError, true);
            let mut record = Record::from_rdata(
                Name::from(qname),
                0,
                RData::TXT(TXT::from_bytes(vec![text])),
            );
            record.dns_class = DNSClass::CH;
            res.answers.push(record);
            res
        }
        _ => Resolution::new(ResponseCode::Refused, false),
    }
}

fn resolve(data: &DnsData, qname: &LowerName, qtype: RecordType, client: &Client) -> Resolution {
    let zones = &data.compiled.zones;
    let Some(mut zone) = zones.zone_for(qname) else {
        return Resolution::new(ResponseCode::Refused, false);
    };
    let mut res = Resolution::new(ResponseCode::NoError, true);
    let mut name = qname.clone();
    for _ in 0..MAX_CHAIN {
        match zone.find(&name) {
            Found::Missing => {
                res.rcode = ResponseCode::NXDomain;
                res.authorities.push(zone.negative_soa.clone());
                res.denied = Some(Denied {
                    name: Name::from(&name),
                    types: None,
                });
                return res;
            }
            Found::EmptyNonTerminal => {
                res.no_data(zone, &name, qtype, []);
                return res;
            }
            Found::Geo { index, node } => {
                // A geo name at an apex keeps its SOA and NS.
                let apex = node.and_then(|n| n.get(qtype));
                if let (Some(set), false) =
                    (apex, matches!(qtype, RecordType::A | RecordType::AAAA))
                {
                    res.answers.extend(set.records.iter().cloned());
                    return res;
                }
                let (choice, scope) = decide(data, index, client);
                res.scope = scope;
                let records = geo_records(data, index, &choice, qtype);
                if records.is_empty() {
                    let statics = node.iter().flat_map(|n| n.rrsets.iter().map(|s| s.rtype));
                    res.no_data(zone, &name, qtype, geo_types(data, index).chain(statics));
                }
                res.answers.extend(records);
                res.geo = Some((index, choice.chosen));
                // A type no candidate has addresses of (AAAA of an IPv4-only
                // name, MX) is NODATA wherever the client is; only an ECS
                // scope would tell clients apart.
                res.same_everywhere = client.ecs.is_none() && !geo_answers_with(data, index, qtype);
                return res;
            }
            Found::Node { node, wildcard } => {
                if wildcard && name == *qname {
                    res.wildcard = node
                        .rrsets
                        .first()
                        .and_then(|set| set.records.first())
                        .map(|r| r.name.clone());
                }
                let owned = |r: &Record| {
                    let mut r = r.clone();
                    if wildcard {
                        r.name = Name::from(&name);
                    }
                    r
                };
                // RFC 8482: one RRset is a complete answer to ANY.
                let set = match qtype {
                    RecordType::ANY => node.rrsets.first(),
                    _ => node.get(qtype),
                };
                if let Some(set) = set {
                    res.answers.extend(set.records.iter().map(owned));
                    return res;
                }
                let Some(cname) = node.get(RecordType::CNAME) else {
                    res.no_data(zone, &name, qtype, node.rrsets.iter().map(|s| s.rtype));
                    return res;
                };
                res.answers.extend(cname.records.iter().map(owned));
                let RData::CNAME(target) = &cname.records[0].data else {
                    return res;
                };
                // RFC 1034 §3.6.2: a loop ends where it comes back, each
                // CNAME given once.
                if res
                    .answers
                    .iter()
                    .any(|r| r.name == target.0 && r.record_type() == RecordType::CNAME)
                {
                    return res;
                }
                let target = LowerName::from(&target.0);
                // A target outside our zones is the resolver's to follow.
                match zones.zone_for(&target) {
                    Some(next) => {
                        zone = next;
                        name = target;
                    }
                    None => return res,
                }
            }
        }
    }
    res
}

/// Ranks the candidates of geo name `index` for `client`: the ranking and
/// the ECS scope to return (None without ECS). The location's candidates
/// and how widely they hold come from the name's scope tree, built with
/// the data (no database lookup per query); a name with CIDR map entries
/// looks the client up instead, as its answer depends on the address
/// itself. The scope also covers the hashed client network when a split,
/// spill-over or weight used it.
pub(super) fn decide(data: &DnsData, index: usize, client: &Client) -> (Ranking, Option<u8>) {
    let (addr, scope_cap) = match client.ecs {
        Some(ecs) if ecs.source_prefix > 0 => (ecs.addr, Some(ecs.source_prefix)),
        // RFC 7871 §7.1.2: source prefix 0 asks for the resolver's own
        // address to be used, and the answer is scoped to everyone.
        Some(_) => (client.src, Some(0)),
        None => (client.src, None),
    };
    let geo = &data.compiled.geo[index];
    if geo.maps.has_cidrs() {
        let location: Location = data.locator.position(addr);
        return decide_at(data, index, addr, scope_cap, &location, |i| data.state(i));
    }
    let (candidates, prefix_len) = data.scopes.find(index, addr);
    rank_for(
        data,
        index,
        addr,
        scope_cap,
        candidates.clone(),
        prefix_len,
        |i| data.state(i),
    )
}

/// [`decide`] for a client at `addr`, placed at `location`, asking for
/// scope at most `scope_cap`, with the data centers' states from `state`:
/// the database network's scope, not the aggregated one (for names with
/// CIDR entries, and `geolb lookup`).
#[inline]
pub(super) fn decide_at(
    data: &DnsData,
    index: usize,
    addr: IpAddr,
    scope_cap: Option<u8>,
    location: &Location,
    state: impl Fn(usize) -> geo::DcState,
) -> (Ranking, Option<u8>) {
    let geo = &data.compiled.geo[index];
    let dcs = &data.compiled.datacenters;
    let mut decided = location.prefix_len;
    let candidates = match geo.maps.by_cidr(addr) {
        (Some(entry), bits) => {
            decided = decided.max(bits);
            geo::candidates_for(geo, dcs, location.coords, Some(entry))
        }
        (None, bits) => {
            decided = decided.max(bits);
            geo::candidate_order(geo, dcs, location)
        }
    };
    rank_for(data, index, addr, scope_cap, candidates, decided, state)
}

/// Health, split, spill-over and weights applied to `candidates`, which
/// hold for the client's network of `decided` bits.
#[inline]
fn rank_for(
    data: &DnsData,
    index: usize,
    addr: IpAddr,
    scope_cap: Option<u8>,
    candidates: geo::Candidates,
    mut decided: u8,
    state: impl Fn(usize) -> geo::DcState,
) -> (Ranking, Option<u8>) {
    let geo = &data.compiled.geo[index];
    let dcs = &data.compiled.datacenters;
    let hashed = geo
        .hashes
        .then(|| geo::client_hash(addr, scope_cap, geo.salt));
    let ranking = geo::rank(geo, dcs, candidates, hashed.map(|h| h.0), state);
    if let Some((_, bits)) = hashed
        && ranking.hashed(dcs)
    {
        decided = decided.max(bits);
    }
    (ranking, scope_cap.map(|cap| decided.min(cap)))
}

/// The types a geo name can answer with: A and AAAA as its candidates
/// have addresses of each family.
fn geo_types(data: &DnsData, index: usize) -> impl Iterator<Item = RecordType> {
    let (geo, dcs) = (&data.compiled.geo[index], &data.compiled.datacenters);
    let has = |v6: bool| geo.has_addresses(dcs, v6);
    [(RecordType::A, has(false)), (RecordType::AAAA, has(true))]
        .into_iter()
        .filter_map(|(t, has)| has.then_some(t))
}

/// Whether some candidate of geo name `index` has addresses a `qtype`
/// query can be answered with.
fn geo_answers_with(data: &DnsData, index: usize, qtype: RecordType) -> bool {
    geo_types(data, index).any(|t| t == qtype || qtype == RecordType::ANY)
}

fn geo_records(data: &DnsData, index: usize, ranking: &Ranking, qtype: RecordType) -> Vec<Record> {
    let geo = &data.compiled.geo[index];
    let dcs = &data.compiled.datacenters;
    let chosen = || ranking.chosen.iter().map(|&i| &dcs[i]);
    let record = |rdata: RData| Record::from_rdata(geo.name.clone(), geo.ttl, rdata);
    let v4 = || {
        chosen()
            .flat_map(|dc| dc.v4_for(ranking.hash))
            .map(|a| record(RData::A(A(*a))))
    };
    let v6 = || {
        chosen()
            .flat_map(|dc| dc.v6_for(ranking.hash))
            .map(|a| record(RData::AAAA(AAAA(*a))))
    };
    match qtype {
        RecordType::A => v4().collect(),
        RecordType::AAAA => v6().collect(),
        RecordType::ANY => {
            let a: Vec<Record> = v4().collect();
            if a.is_empty() { v6().collect() } else { a }
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;

    use hickory_proto::op::{Message, MessageType, Query};

    use super::*;
    use crate::dns::{DatacenterHealth, compile};
    use crate::geoip::{GeoDb, Locator};

    const CONFIG: &str = r#"
[geoip]
database = "GEOIP"

[[geoip.network]]
cidr = "10.0.0.0/8"
location = { lat = 50.11, lon = 8.68 }

[dns]
listen = ["127.0.0.1:0"]
nsid = "ns-test"

[[dns.zone]]
origin = "mysite.com"
ttl = 300
soa = { mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }
ns = ["ns1.mysite.com."]
records = [
  { name = "ns1", type = "A", value = "192.0.2.53" },
  { name = "www", type = "CNAME", value = "api.mysite.com." },
  { name = "alias", type = "CNAME", value = "www.mysite.com." },
  { name = "away", type = "CNAME", value = "elsewhere.example." },
  { name = "gone", type = "CNAME", value = "nothing.mysite.com." },
  { name = "loop1", type = "CNAME", value = "loop2.mysite.com." },
  { name = "loop2", type = "CNAME", value = "loop1.mysite.com." },
  { name = "a.deep", type = "A", value = "192.0.2.1" },
  { name = "*.wild", type = "A", value = "192.0.2.2" },
  { name = "@", type = "MX", value = "10 mail.mysite.com." },
  { name = "big", type = "TXT", value = "BIG" },
  { name = "_api._tcp", type = "SRV", value = "1 1 443 api.mysite.com." },
  { name = "LONG", type = "A", value = "192.0.2.3" },
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
always_up = true

[[datacenter]]
name = "us-east"
location = { lat = 39.04, lon = -77.49 }
addresses = ["203.0.113.10", "2001:db8:a::10"]
always_up = true

[[datacenter]]
name = "ap-southeast"
location = { lat = 1.35, lon = 103.82 }
addresses = ["192.0.2.10"]
always_up = true
"#;

    /// The labels of a name of 255 octets (the most a name may have, in
    /// wire form) under mysite.com (12 of them): 64 + 64 + 64 + 51.
    pub(crate) const LONG_LABELS: &str = concat!(
        "lllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll.",
        "lllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll.",
        "lllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll.",
        "llllllllllllllllllllllllllllllllllllllllllllllllll"
    );

    pub(crate) fn data(health: Arc<dyn DatacenterHealth>) -> DnsData {
        data_with("", health)
    }

    /// Geo names with policy maps, splits, spill-over and weighted
    /// addresses, for [`data_with`]: `mapped` by regions only (served from
    /// its scope tree), `mapped-cidr` with a CIDR entry (looked up per
    /// query), and a data center whose addresses are weighted.
    pub(crate) const POLICIES: &str = r#"
[[dns.geo]]
name = "mapped.mysite.com"
datacenters = ["us-east", "eu-west", "ap-southeast"]

[[dns.geo.map]]
continent = "EU"
datacenters = ["ap-southeast"]

[[dns.geo.map]]
country = "US"
datacenters = ["eu-west"]

[[dns.geo.map]]
subdivision = "US-WA"
datacenters = ["ap-southeast"]
only = true

[[dns.geo]]
name = "mapped-cidr.mysite.com"
datacenters = ["us-east", "eu-west", "ap-southeast", "weighted"]
answers = 2
spill_over = 2

[[dns.geo.map]]
cidr = "10.0.0.0/8"
datacenters = [{ name = "eu-west", weight = 70 }, { name = "weighted", weight = 30 }]

[[dns.geo.map]]
continent = "EU"
datacenters = ["weighted", "eu-west"]
only = true

[[dns.geo.map]]
country = "US"
datacenters = [{ name = "us-east", weight = 1 }, { name = "weighted", weight = 1 }]

[[datacenter]]
name = "weighted"
location = { lat = 48.85, lon = 2.35 }
addresses = [{ addr = "192.0.2.61", weight = 3 }, "192.0.2.62", { addr = "2001:db8:f::1", weight = 2 }, "2001:db8:f::2"]
capacity = 3
always_up = true
"#;

    /// [`data`] with `extra` appended to the config.
    pub(crate) fn data_with(extra: &str, health: Arc<dyn DatacenterHealth>) -> DnsData {
        let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/GeoIP2-City-Test.mmdb");
        let text = (CONFIG.to_owned() + extra)
            .replace("GEOIP", &db.display().to_string())
            .replace("BIG", &"x".repeat(700))
            .replace("LONG", LONG_LABELS);
        let config = crate::config::parse_str(&text, Path::new("/tmp/geolb.toml")).unwrap();
        let geoip = config.geoip.as_ref().unwrap();
        let locator = Locator::new(
            Some(Arc::new(
                GeoDb::open(geoip.database.as_ref().unwrap()).unwrap(),
            )),
            &geoip.networks,
        );
        compile(&config, Arc::new(locator), health).unwrap()
    }

    struct Ask<'a> {
        name: &'a str,
        qtype: RecordType,
        qclass: DNSClass,
        /// An empty NSID option in the OPT.
        nsid: bool,
        /// (address, source prefix)
        ecs: Option<(&'a str, u8)>,
        edns: Option<u16>,
        src: &'a str,
        protocol: Protocol,
    }

    fn ask(name: &str, qtype: RecordType) -> Ask<'_> {
        Ask {
            name,
            qtype,
            qclass: DNSClass::IN,
            nsid: false,
            ecs: None,
            edns: Some(1232),
            src: "192.0.2.200:5353",
            protocol: Protocol::Udp,
        }
    }

    impl Ask<'_> {
        fn ecs(mut self, addr: &'static str, prefix: u8) -> Self {
            self.ecs = Some((addr, prefix));
            self
        }

        fn request(&self) -> Request {
            let mut m = Message::new(7, MessageType::Query, OpCode::Query);
            let mut query = Query::query(Name::from_ascii(self.name).unwrap(), self.qtype);
            query.set_query_class(self.qclass);
            m.add_query(query);
            if let Some(size) = self.edns {
                let mut edns = Edns::new();
                edns.set_max_payload(size);
                if self.nsid {
                    edns.options_mut().insert(EdnsOption::Unknown(
                        super::super::identity::OPTION_NSID,
                        vec![],
                    ));
                }
                if let Some((addr, prefix)) = self.ecs {
                    edns.options_mut()
                        .insert(EdnsOption::Subnet(ClientSubnet::new(
                            addr.parse().unwrap(),
                            prefix,
                            0,
                        )));
                }
                m.set_edns(edns);
            }
            let src: SocketAddr = self.src.parse().unwrap();
            Request::from_bytes(m.to_vec().unwrap(), src, self.protocol).unwrap()
        }

        fn on(&self, data: &DnsData) -> Message {
            let request = self.request();
            let mut bytes = Vec::new();
            encode_sized(build(data, &request), &request, &mut bytes);
            Message::from_vec(&bytes).unwrap()
        }
    }

    fn all_up() -> DnsData {
        data(Arc::new(crate::dns::AllUp))
    }

    fn addresses(m: &Message) -> Vec<String> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    fn scope(m: &Message) -> Option<(u8, u8)> {
        match m
            .edns
            .as_ref()?
            .option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet)?
        {
            EdnsOption::Subnet(s) => Some((s.source_prefix(), s.scope_prefix())),
            _ => None,
        }
    }

    #[test]
    fn authoritative_answers_refusals_and_negative_answers() {
        let d = all_up();
        let m = ask("ns1.mysite.com.", RecordType::A).on(&d);
        assert!(m.metadata.authoritative);
        assert_eq!(addresses(&m), ["192.0.2.53"]);

        let m = ask("example.org.", RecordType::A).on(&d);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(!m.metadata.authoritative);

        let m = ask("nothing.mysite.com.", RecordType::A).on(&d);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities.len(), 1);
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(m.authorities[0].ttl, 60, "min(300, minimum 60)");

        for (name, qtype) in [
            ("ns1.mysite.com.", RecordType::MX),
            ("deep.mysite.com.", RecordType::A),
        ] {
            let m = ask(name, qtype).on(&d);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(m.answers.is_empty(), "{name}");
            assert_eq!(m.authorities[0].record_type(), RecordType::SOA, "{name}");
        }

        let m = ask("mysite.com.", RecordType::SOA).on(&d);
        assert_eq!(m.answers[0].ttl, 300);
        let m = ask("mysite.com.", RecordType::ANY).on(&d);
        assert_eq!(m.answers.len(), 1, "RFC 8482: one RRset");
    }

    #[test]
    fn cname_chains_are_followed_inside_the_zones() {
        let d = all_up();
        let m = ask("alias.mysite.com.", RecordType::A)
            .ecs("81.2.69.160", 32)
            .on(&d);
        let types: Vec<RecordType> = m.answers.iter().map(|r| r.record_type()).collect();
        assert_eq!(types, [RecordType::CNAME, RecordType::CNAME, RecordType::A]);
        assert_eq!(addresses(&m), ["198.51.100.10"]);
        assert_eq!(scope(&m), Some((32, 27)), "the chain ends in a geo answer");

        let m = ask("www.mysite.com.", RecordType::CNAME).on(&d);
        assert_eq!(m.answers.len(), 1);

        let m = ask("away.mysite.com.", RecordType::A).on(&d);
        assert_eq!(
            (m.answers.len(), m.metadata.response_code),
            (1, ResponseCode::NoError)
        );

        let m = ask("gone.mysite.com.", RecordType::A).on(&d);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.answers.len(), 1);

        let m = ask("loop1.mysite.com.", RecordType::A).on(&d);
        let owners: Vec<String> = m.answers.iter().map(|r| r.name.to_ascii()).collect();
        assert_eq!(owners, ["loop1.mysite.com.", "loop2.mysite.com."]);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }

    #[test]
    fn a_geo_name_at_an_apex_keeps_its_soa_and_ns() {
        let d = all_up();
        let m = ask("apex.test.", RecordType::SOA)
            .ecs("81.2.69.160", 27)
            .on(&d);
        assert_eq!(m.answers[0].record_type(), RecordType::SOA);
        assert_eq!(scope(&m), Some((27, 0)));
        let m = ask("apex.test.", RecordType::NS).on(&d);
        assert_eq!(m.answers[0].record_type(), RecordType::NS);
        let m = ask("apex.test.", RecordType::A)
            .ecs("81.2.69.160", 27)
            .on(&d);
        assert_eq!(addresses(&m), ["198.51.100.10"]);
        // London gets the configured order, as the empty /4 around it.
        assert_eq!(scope(&m), Some((27, 4)));
    }

    #[test]
    fn wildcards_take_the_queried_name() {
        let d = all_up();
        let m = ask("x.wild.mysite.com.", RecordType::A).on(&d);
        assert_eq!(addresses(&m), ["192.0.2.2"]);
        assert_eq!(
            m.answers[0].name,
            Name::from_ascii("x.wild.mysite.com.").unwrap()
        );
    }

    /// RRL counts answers from one wildcard together, whatever the name
    /// asked (as BIND does), and names that differ apart.
    #[test]
    fn wildcard_answers_are_one_rrl_class() {
        let d = all_up();
        let src: SocketAddr = "192.0.2.200:5353".parse().unwrap();
        let class = |name: &str| {
            let request = ask(name, RecordType::A).request();
            let mut reply = Vec::new();
            crate::dns::udp::answer_general(&d, request.as_slice(), src, &mut reply).unwrap()
        };
        assert_eq!(
            build(&d, &ask("x.wild.mysite.com.", RecordType::A).request())
                .wildcard
                .map(|w| w.to_ascii()),
            Some("*.wild.mysite.com.".to_owned())
        );
        let wild = class("x.wild.mysite.com.");
        assert_eq!(wild, class("Random-1234.wild.mysite.com."));
        assert_ne!(wild, class("a.deep.mysite.com."));
        assert_ne!(class("a.deep.mysite.com."), class("ns1.mysite.com."));
    }

    #[test]
    fn geo_answers_follow_the_client_and_carry_the_scope() {
        let d = all_up();
        let cases = [
            ("81.2.69.160", 27, "198.51.100.10", 27),
            // Milton, as the empty /5 around it: us-east first.
            ("216.160.83.56", 32, "203.0.113.10", 5),
            ("214.0.0.0", 24, "192.0.2.10", 24),
            // An override: Frankfurt is nearest to eu-west.
            ("10.1.0.0", 16, "198.51.100.10", 8),
            // The source prefix caps the scope.
            ("81.2.69.0", 24, "203.0.113.10", 24),
        ];
        for (addr, prefix, expected, expected_scope) in cases {
            let m = ask("api.mysite.com.", RecordType::A)
                .ecs(addr, prefix)
                .on(&d);
            assert_eq!(addresses(&m), [expected], "{addr}/{prefix}");
            assert_eq!(scope(&m), Some((prefix, expected_scope)), "{addr}/{prefix}");
        }
        // Unknown location (database miss): the configured order, scoped to
        // the empty network.
        let m = ask("api.mysite.com.", RecordType::A)
            .ecs("1.1.1.0", 24)
            .on(&d);
        assert_eq!(addresses(&m), ["203.0.113.10"]);
        let (_, miss_scope) = scope(&m).unwrap();
        assert!(miss_scope > 0 && miss_scope <= 24, "{miss_scope}");

        // Without ECS: the source address decides, and no option comes back.
        let mut q = ask("api.mysite.com.", RecordType::A);
        q.src = "81.2.69.161:40000";
        let m = q.on(&d);
        assert_eq!(addresses(&m), ["198.51.100.10"]);
        assert_eq!(scope(&m), None);
        // Source prefix 0: the resolver's address decides, scope 0.
        let mut q = ask("api.mysite.com.", RecordType::A).ecs("0.0.0.0", 0);
        q.src = "214.0.0.7:40000";
        let m = q.on(&d);
        assert_eq!(addresses(&m), ["192.0.2.10"]);
        assert_eq!(scope(&m), Some((0, 0)));

        // Two answers, nearest first.
        let m = ask("two.mysite.com.", RecordType::A)
            .ecs("216.160.83.56", 32)
            .on(&d);
        assert_eq!(addresses(&m), ["203.0.113.10", "198.51.100.10"]);
    }

    #[test]
    fn nodata_for_a_missing_family_keeps_the_scope_and_static_answers_have_scope_0() {
        let d = all_up();
        let m = ask("api.mysite.com.", RecordType::AAAA)
            .ecs("214.0.0.0", 24)
            .on(&d);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(scope(&m), Some((24, 24)));
        let m = ask("api.mysite.com.", RecordType::AAAA)
            .ecs("81.2.69.160", 27)
            .on(&d);
        assert_eq!(addresses(&m), ["2001:db8:e::10"]);
        let m = ask("api.mysite.com.", RecordType::MX)
            .ecs("81.2.69.160", 27)
            .on(&d);
        assert_eq!(scope(&m), Some((27, 27)), "ranked whatever the type");

        for name in ["ns1.mysite.com.", "nothing.mysite.com.", "example.org."] {
            let m = ask(name, RecordType::A).ecs("81.2.69.160", 27).on(&d);
            assert_eq!(scope(&m), Some((27, 0)), "{name}");
        }
    }

    #[test]
    fn health_and_drain_move_the_answer() {
        // eu-west (index 0) down.
        let d = data(Arc::new(|i: usize| i != 0));
        let m = ask("api.mysite.com.", RecordType::A)
            .ecs("81.2.69.160", 27)
            .on(&d);
        assert_eq!(addresses(&m), ["203.0.113.10"]);
        // Everything down: fail open to the nearest.
        let d = data(Arc::new(|_: usize| false));
        let m = ask("api.mysite.com.", RecordType::A)
            .ecs("81.2.69.160", 27)
            .on(&d);
        assert_eq!(addresses(&m), ["198.51.100.10"]);
    }

    #[test]
    fn big_answers_truncate_over_udp_and_fit_over_tcp() {
        let d = all_up();
        let mut q = ask("big.mysite.com.", RecordType::TXT).ecs("81.2.69.160", 27);
        q.edns = Some(512);
        let m = q.on(&d);
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert_eq!(scope(&m), Some((27, 0)), "TC keeps the OPT with ECS");

        q.edns = None;
        q.ecs = None;
        assert!(q.on(&d).metadata.truncation);

        q.edns = Some(4096);
        let m = q.on(&d);
        assert!(!m.metadata.truncation, "700 bytes fit the 1232 cap");
        assert_eq!(m.answers.len(), 1);

        let mut q = ask("big.mysite.com.", RecordType::TXT);
        q.edns = None;
        q.protocol = Protocol::Tcp;
        let m = q.on(&d);
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 1);
    }

    #[test]
    fn malformed_ecs_badvers_and_odd_queries() {
        let d = all_up();
        // Bits past the prefix: hickory accepts it, we do not.
        let m = ask("api.mysite.com.", RecordType::A)
            .ecs("81.2.69.160", 25)
            .on(&d);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

        let q = ask("api.mysite.com.", RecordType::A);
        let mut bytes = q.request().as_slice().to_vec();
        // The OPT record ends the message: ... TTL(ext-rcode, version,
        // flags x2), RDLENGTH x2, no options.
        let version = bytes.len() - 5;
        bytes[version] = 1;
        let request = Request::from_bytes(bytes, q.src.parse().unwrap(), Protocol::Udp).unwrap();
        let reply = build(&d, &request);
        assert_eq!(reply.metadata.response_code, ResponseCode::BADVERS);

        let m = ask("mysite.com.", RecordType::AXFR).on(&d);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn owners_named_by_the_query_keep_its_spelling() {
        let d = all_up();
        for (name, qtype) in [
            ("MySite.COM.", RecordType::SOA),
            ("nS1.mysite.com.", RecordType::A),
            ("API.mysite.com.", RecordType::AAAA),
            ("X.Wild.mysite.com.", RecordType::A),
        ] {
            let m = ask(name, qtype).on(&d);
            assert_eq!(m.queries[0].name().to_ascii(), name);
            assert!(!m.answers.is_empty(), "{name}");
            for r in &m.answers {
                assert_eq!(r.name.to_ascii(), name);
            }
        }
        // Other owners keep the zone's spelling.
        let m = ask("WWW.mysite.com.", RecordType::A).on(&d);
        assert_eq!(m.answers[0].name.to_ascii(), "WWW.mysite.com.");
        assert_eq!(m.answers[1].name.to_ascii(), "api.mysite.com.");
    }

    #[test]
    fn additional_addresses_of_in_zone_targets_go_before_any_tc() {
        let d = all_up();
        let m = ask("mysite.com.", RecordType::NS).on(&d);
        let extra: Vec<_> = m
            .additionals
            .iter()
            .map(|r| (r.name.to_ascii(), r.record_type()))
            .collect();
        assert_eq!(extra, [("ns1.mysite.com.".to_owned(), RecordType::A)]);
        // mail.mysite.com has no address; an A answer has no targets.
        assert!(
            ask("mysite.com.", RecordType::MX)
                .on(&d)
                .additionals
                .is_empty()
        );
        assert!(
            ask("ns1.mysite.com.", RecordType::A)
                .on(&d)
                .additionals
                .is_empty()
        );

        // Too much additional data for 512 bytes: the last RRsets go, the
        // rest stays, no TC.
        let mut q = ask("mysite.com.", RecordType::NS);
        q.edns = None;
        let request = q.request();
        let mut reply = build(&d, &request);
        let ns1 = reply.additionals[0].clone();
        let mut other = ns1.clone();
        other.name = Name::from_ascii("other.mysite.com.").unwrap();
        reply.additionals.extend(std::iter::repeat_n(other, 40));
        let mut bytes = Vec::new();
        encode_sized(reply, &request, &mut bytes);
        let m = Message::from_vec(&bytes).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.additionals, [ns1]);
    }

    fn nsid(m: &Message) -> Option<Vec<u8>> {
        match m.edns.as_ref()?.option(EdnsCode::NSID)? {
            EdnsOption::NSID(payload) => Some(payload.as_ref().to_vec()),
            other => panic!("{other:?}"),
        }
    }

    /// RFC 5001 §2.2: NSID only to a query that asked, on every rcode.
    #[test]
    fn nsid_goes_to_queries_asking_for_it_whatever_the_rcode() {
        let d = all_up();
        let cases = [
            (
                "api.mysite.com.",
                Some(("81.2.69.160", 27)),
                ResponseCode::NoError,
            ),
            ("nothing.mysite.com.", None, ResponseCode::NXDomain),
            ("example.org.", None, ResponseCode::Refused),
            // Bits past the prefix.
            (
                "api.mysite.com.",
                Some(("81.2.69.160", 25)),
                ResponseCode::FormErr,
            ),
        ];
        for (name, ecs, rcode) in cases {
            for asked in [true, false] {
                let mut q = ask(name, RecordType::A);
                q.ecs = ecs;
                q.nsid = asked;
                let m = q.on(&d);
                assert_eq!(m.metadata.response_code, rcode, "{name}");
                let expected = asked.then(|| b"ns-test".to_vec());
                assert_eq!(nsid(&m), expected, "{name} asked: {asked}");
            }
        }
        let mut q = ask("api.mysite.com.", RecordType::A).ecs("81.2.69.160", 27);
        q.nsid = true;
        assert_eq!(scope(&q.on(&d)), Some((27, 27)), "ECS kept beside NSID");
    }

    /// An NSID that does not fit is left out rather than truncating the
    /// answer; over TCP it stays.
    #[test]
    fn nsid_is_left_out_before_an_answer_is_truncated() {
        let d = all_up();
        for (protocol, kept) in [(Protocol::Udp, false), (Protocol::Tcp, true)] {
            let mut q = ask("big.mysite.com.", RecordType::TXT);
            q.edns = Some(800);
            q.nsid = true;
            q.protocol = protocol;
            let request = q.request();
            let mut reply = build(&d, &request);
            let edns = reply.edns.as_mut().unwrap();
            edns.options_mut().remove(EdnsCode::NSID);
            edns.options_mut()
                .insert(EdnsOption::Unknown(3, vec![b'n'; 255]));
            let mut bytes = Vec::new();
            encode_sized(reply, &request, &mut bytes);
            let m = Message::from_vec(&bytes).unwrap();
            assert!(!m.metadata.truncation, "{protocol:?}");
            assert_eq!(m.answers.len(), 1, "{protocol:?}");
            assert_eq!(nsid(&m).is_some(), kept, "{protocol:?}");
        }
    }

    #[test]
    fn chaos_names_are_answered_when_configured_and_refused_otherwise() {
        let d = all_up();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        for (name, qtype) in [
            ("id.server.", RecordType::TXT),
            ("HOSTNAME.bind.", RecordType::TXT),
            ("id.server.", RecordType::ANY),
        ] {
            let mut q = ask(name, qtype);
            q.qclass = DNSClass::CH;
            let m = q.on(&d);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(m.metadata.authoritative, "{name}");
            let [record] = &m.answers[..] else {
                panic!("{name}: {:?}", m.answers);
            };
            assert_eq!(record.name.to_ascii(), name);
            assert_eq!((record.dns_class, record.ttl), (DNSClass::CH, 0));
            let RData::TXT(txt) = &record.data else {
                panic!("{record:?}");
            };
            assert_eq!(&*txt.txt_data, [host.trim().as_bytes().into()]);
        }
        for (name, qtype) in [
            // Off by default.
            ("version.bind.", RecordType::TXT),
            ("version.server.", RecordType::TXT),
            ("id.server.", RecordType::A),
            ("authors.bind.", RecordType::TXT),
            ("ns1.mysite.com.", RecordType::A),
        ] {
            let mut q = ask(name, qtype);
            q.qclass = DNSClass::CH;
            let m = q.on(&d);
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
            assert!(m.answers.is_empty() && !m.metadata.authoritative, "{name}");
        }
    }

    /// A geo name as an SRV target: its addresses for this client in the
    /// additional section, and the reply's scope is that decision's.
    #[test]
    fn geo_targets_get_the_clients_addresses_and_narrow_the_scope() {
        let d = all_up();
        let cases = [
            ("81.2.69.160", 27, ["198.51.100.10", "2001:db8:e::10"], 27),
            // Aggregated: Milton's neighbours to /5 give us-east first too.
            ("216.160.83.56", 32, ["203.0.113.10", "2001:db8:a::10"], 5),
        ];
        for (addr, prefix, expected, expected_scope) in cases {
            let m = ask("_api._tcp.mysite.com.", RecordType::SRV)
                .ecs(addr, prefix)
                .on(&d);
            assert_eq!(m.answers.len(), 1);
            let extra: Vec<(String, String)> = m
                .additionals
                .iter()
                .map(|r| (r.name.to_ascii(), r.data.to_string()))
                .collect();
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|a| ("api.mysite.com.".to_owned(), a.to_string()))
                .collect();
            assert_eq!(extra, expected, "{addr}");
            assert_eq!(scope(&m), Some((prefix, expected_scope)), "{addr}");
        }
        // Without ECS the source address decides; no option comes back.
        let mut q = ask("_api._tcp.mysite.com.", RecordType::SRV);
        q.src = "214.0.0.7:40000";
        let m = q.on(&d);
        assert_eq!(m.additionals.len(), 1, "ap-southeast has no AAAA");
        assert_eq!(m.additionals[0].data.to_string(), "192.0.2.10");
        assert_eq!(scope(&m), None);
    }

    #[test]
    fn popping_an_rrset_takes_its_records_only() {
        let record =
            |name: &str, rdata| Record::from_rdata(Name::from_ascii(name).unwrap(), 1, rdata);
        let a = || RData::A(A::new(192, 0, 2, 1));
        let mut records = vec![record("x.", a()), record("y.", a()), record("y.", a())];
        assert!(pop_rrset(&mut records));
        assert_eq!(records.len(), 1);
        assert!(pop_rrset(&mut records));
        assert!(!pop_rrset(&mut records));
    }

    #[test]
    fn a_signed_query_gets_notauth_with_badkey_and_no_mac() {
        use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
        let d = all_up();
        let q = ask("api.mysite.com.", RecordType::A);
        let m = Message::from_vec(q.request().as_slice()).unwrap();
        let tsig = TSIG::new(
            TsigAlgorithm::HmacSha256,
            1_800_000_000,
            300,
            vec![7; 32],
            7,
            None,
            Vec::new(),
        );
        let key = Name::from_ascii("Some.Key.").unwrap();
        let mut record = Record::from_rdata(key.clone(), 0, RData::TSIG(tsig.clone()));
        record.dns_class = DNSClass::ANY;
        let mut before_opt = m.clone();
        // hickory-proto writes the OPT after the additional records: the
        // TSIG RR is then not last, which RFC 8945 §5.1 makes a FORMERR.
        before_opt.additionals.push(record);
        let src = q.src.parse().unwrap();
        // hickory-proto with its DNSSEC features refuses such a message
        // itself (and wire.rs answers FORMERR); without them, build does.
        if let Ok(request) = Request::from_bytes(before_opt.to_vec().unwrap(), src, Protocol::Udp) {
            let reply = build(&d, &request);
            assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        }

        let mut bytes = m.to_vec().unwrap();
        tsig::append(&mut bytes, &key, tsig);
        let request = Request::from_bytes(bytes, src, Protocol::Udp).unwrap();
        let mut bytes = Vec::new();
        encode_sized(build(&d, &request), &request, &mut bytes);
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NotAuth);
        assert!(m.answers.is_empty());
        assert!(m.edns.is_some(), "the OPT stays");
        assert!(m.additionals.is_empty(), "{:?}", m.additionals);
        let record = m.signature.as_deref().expect("one TSIG RR");
        assert_eq!(record.name.to_ascii(), "Some.Key.");
        let tsig = &record.data;
        assert_eq!(tsig.error, Some(TsigError::BadKey));
        assert!(tsig.mac.is_empty());
        assert_eq!((tsig.oid, tsig.time, tsig.fudge), (7, 1_800_000_000, 300));
    }
}
