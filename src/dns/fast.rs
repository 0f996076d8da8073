//! The common UDP queries answered straight from the wire: an A or AAAA
//! query (at most one OPT, its options at most one Client Subnet, one
//! COOKIE and padding) for a geo name or a name with records of that type.
//! Everything else, and every answer this cannot write exactly as the
//! general path would, goes to the general path (`answer`), which stays
//! the definition: a test checks that both give the same bytes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_proto::rr::{LowerName, RData, RecordType};

use super::answer::{self, Client};
use super::rrl::{Category, Class};
use super::zone::{Found, Zones};
use super::{DnsData, cookie, ecs, geo};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
const OPTION_ECS: u16 = 8;
/// EDNS padding (RFC 7830).
const OPTION_PADDING: u16 = 12;
/// A compression pointer to the question's name, right after the header.
const QUESTION_NAME: [u8; 2] = [0xc0, 12];
const HEADER_LEN: usize = 12;
/// RFC 1035 §2.3.4: a name is at most 255 octets in wire form, every
/// length octet counted, the root's included.
const MAX_NAME: usize = 255;
/// RFC 1035 §2.3.4: a label is at most 63 octets.
const MAX_LABEL: u8 = 63;

/// What a name answers with, when the fast path can write it.
pub(super) enum Target {
    /// A geo name (index into the geo names); not at a zone apex. With
    /// whether some candidate has A, and AAAA, addresses: without, the
    /// answer is NODATA for every client (the general path's, then the
    /// packet cache's).
    Geo { index: usize, families: [bool; 2] },
    /// Fixed A and/or AAAA records (ttl, address), in zone order.
    Fixed {
        a: Vec<(u32, Ipv4Addr)>,
        aaaa: Vec<(u32, Ipv6Addr)>,
    },
}

/// Owner names (lower-case wire form) the fast path answers for; answers
/// carry the query's spelling of the name.
#[derive(Default)]
pub(super) struct Index {
    names: HashMap<Box<[u8]>, Entry, foldhash::fast::FixedState>,
}

/// What a name answers, what RRL counts its A and AAAA answers as (hashed
/// once, here), and whether its zone is signed (then queries with DO = 1
/// go to the general path, which signs).
type Entry = (Target, [Class; 2], bool);

/// The RRL classes of answers to A and AAAA queries for `lower`.
fn classes(lower: &[u8]) -> [Class; 2] {
    [TYPE_A, TYPE_AAAA].map(|qtype| Class::new(Category::Answer, lower, qtype))
}

impl Index {
    /// Indexes what `zones` answer from fixed data for an exact name: geo
    /// names and nodes with A/AAAA records, as `find` sees them in the
    /// zone `zone_for` picks.
    pub(super) fn build(
        zones: &Zones,
        geo: &[geo::GeoName],
        datacenters: &[geo::Datacenter],
    ) -> Index {
        let mut names = HashMap::default();
        for (index, g) in geo.iter().enumerate() {
            let Some(zone) = zones.zone_for(&g.lower) else {
                continue;
            };
            if let Found::Geo { node: None, .. } = zone.find(&g.lower) {
                let lower = lower_wire(&g.lower);
                let classes = classes(&lower);
                let signed = zone.signer.is_some();
                let families = [false, true].map(|v6| g.has_addresses(datacenters, v6));
                let target = Target::Geo { index, families };
                names.insert(lower, (target, classes, signed));
            }
        }
        for zone in zones.iter() {
            for (lower, node) in zone.nodes() {
                let owner_zone = zones.zone_for(lower);
                if !owner_zone.is_some_and(|z| std::ptr::eq(z, zone)) {
                    continue;
                }
                if !matches!(
                    zone.find(lower),
                    Found::Node {
                        wildcard: false,
                        ..
                    }
                ) {
                    continue;
                }
                let records = || {
                    node.rrsets
                        .iter()
                        .filter(|s| matches!(s.rtype, RecordType::A | RecordType::AAAA))
                        .flat_map(|s| s.records.iter())
                };
                if records().next().is_none() {
                    continue;
                }
                let (mut a, mut aaaa) = (Vec::new(), Vec::new());
                for r in records() {
                    match &r.data {
                        RData::A(v4) => a.push((r.ttl, v4.0)),
                        RData::AAAA(v6) => aaaa.push((r.ttl, v6.0)),
                        _ => {}
                    }
                }
                let lower = lower_wire(lower);
                let classes = classes(&lower);
                let signed = zone.signer.is_some();
                names.insert(lower, (Target::Fixed { a, aaaa }, classes, signed));
            }
        }
        Index { names }
    }
}

fn wire_of(name: &hickory_proto::rr::Name) -> Box<[u8]> {
    let mut out = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out.into_boxed_slice()
}

fn lower_wire(name: &LowerName) -> Box<[u8]> {
    let mut out = wire_of(&hickory_proto::rr::Name::from(name));
    out.make_ascii_lowercase();
    out
}

/// A query the fast path can read: the fields it needs, borrowed.
struct Query<'p> {
    id: [u8; 2],
    /// RD (kept in the reply), as in the request's third byte.
    rd: u8,
    /// CD (kept in the reply), as in the request's fourth byte.
    cd: u8,
    /// Name, type and class, as sent (the reply repeats them).
    question: &'p [u8],
    name_len: usize,
    qtype: u16,
    /// The request's OPT.
    edns: Option<Opt<'p>>,
}

/// What the fast path reads of a query's OPT record.
#[derive(Clone, Copy)]
struct Opt<'p> {
    /// The client's UDP size.
    size: u16,
    /// The DO bit (0x80) in its place in the flags' first byte, for the
    /// reply (RFC 3225 §3).
    dnssec_ok: u8,
    /// Client Subnet option data.
    ecs: Option<&'p [u8]>,
    /// COOKIE option data.
    cookie: Option<&'p [u8]>,
}

/// Reads a plain query; None for anything the general path must see.
fn parse(packet: &[u8]) -> Option<Query<'_>> {
    let header = packet.get(..HEADER_LEN)?;
    // QR = 0, opcode QUERY, no TC; Z, AD and rcode 0 … unless set: then
    // the general path decides.
    if header[2] & 0xfa != 0 || header[3] & 0xef != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let mut at = plain_question(packet)?;
    let name_len = at - HEADER_LEN;
    let fixed = packet.get(at..at + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    if !matches!(qtype, TYPE_A | TYPE_AAAA) || u16::from_be_bytes([fixed[2], fixed[3]]) != CLASS_IN
    {
        return None;
    }
    let question = &packet[HEADER_LEN..at + 4];
    at += 4;
    let edns = if count(10) == 1 {
        Some(parse_opt(packet.get(at..)?)?)
    } else if at != packet.len() {
        // Bytes after the question: the general path's FORMERR.
        return None;
    } else {
        None
    };
    Some(Query {
        id: [header[0], header[1]],
        rd: header[2] & 0x01,
        cd: header[3] & 0x10,
        question,
        name_len,
        qtype,
        edns,
    })
}

/// Where the question's name ends in a query of one question and at most
/// one more record (an OPT, or another the caller looks at), the name of
/// plain labels only (a pointer here would be odd anyway, and could point
/// into the id), at most MAX_NAME octets with the root's length octet: a
/// longer one is the general path's to refuse.
pub(super) fn plain_question(packet: &[u8]) -> Option<usize> {
    let header = packet.get(..HEADER_LEN)?;
    let count = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    let mut at = HEADER_LEN;
    loop {
        let len = *packet.get(at)?;
        if len > MAX_LABEL {
            return None;
        }
        at += 1 + usize::from(len);
        if at - HEADER_LEN > MAX_NAME {
            return None;
        }
        if len == 0 {
            return Some(at);
        }
    }
}

/// An OPT record with EDNS version 0, extended rcode 0, and no option but
/// one Client Subnet and one COOKIE (and padding); trailing bytes send it
/// elsewhere too.
fn parse_opt(record: &[u8]) -> Option<Opt<'_>> {
    let [
        0,
        t0,
        t1,
        c0,
        c1,
        rcode_high,
        version,
        flags,
        _,
        l0,
        l1,
        rdata @ ..,
    ] = record
    else {
        return None;
    };
    if u16::from_be_bytes([*t0, *t1]) != TYPE_OPT || *rcode_high != 0 || *version != 0 {
        return None;
    }
    if rdata.len() != usize::from(u16::from_be_bytes([*l0, *l1])) {
        return None;
    }
    let mut opt = Opt {
        size: u16::from_be_bytes([*c0, *c1]),
        dnssec_ok: flags & 0x80,
        ecs: None,
        cookie: None,
    };
    let mut rest = rdata;
    while !rest.is_empty() {
        let [o0, o1, n0, n1, tail @ ..] = rest else {
            return None;
        };
        let (data, tail) = tail.split_at_checked(usize::from(u16::from_be_bytes([*n0, *n1])))?;
        match u16::from_be_bytes([*o0, *o1]) {
            OPTION_ECS if opt.ecs.is_none() => opt.ecs = Some(data),
            cookie::OPTION_COOKIE if opt.cookie.is_none() => opt.cookie = Some(data),
            // Does not change the answer (the general path ignores it).
            OPTION_PADDING => {}
            _ => return None,
        }
        rest = tail;
    }
    Some(opt)
}

/// What the caller counts for an answered query.
pub(super) struct Answered {
    pub qtype: RecordType,
    /// What the answer is, for RRL.
    pub class: Class,
    /// The geo name and chosen data centers, for geo answers.
    pub geo: Option<(usize, smallvec::SmallVec<[usize; 4]>)>,
    /// The query carried ECS.
    pub ecs: bool,
}

/// Writes the answer to `packet` into `reply` when the fast path can;
/// None leaves it to the general path (`reply` is then garbage).
pub(super) fn answer(
    data: &DnsData,
    packet: &[u8],
    src: SocketAddr,
    reply: &mut Vec<u8>,
) -> Option<Answered> {
    let query = parse(packet)?;
    let name = &query.question[..query.name_len];
    let mut key = [0u8; MAX_NAME];
    let key = key.get_mut(..name.len())?;
    key.copy_from_slice(name);
    key.make_ascii_lowercase();
    let (target, classes, signed) = data.compiled.fast.names.get(&*key)?;
    if *signed && query.edns.is_some_and(|opt| opt.dnssec_ok != 0) {
        return None;
    }
    let ecs = match query.edns.and_then(|opt| opt.ecs) {
        Some(option) => Some(ecs::parse(option).ok()?),
        None => None,
    };
    // A malformed COOKIE is the general path's FORMERR.
    let cookie = match query.edns.and_then(|opt| opt.cookie) {
        Some(option) => {
            let presented = cookie::parse(option).ok()?;
            let (secret, ip, now) = (&data.compiled.cookie_secret, src.ip(), cookie::unix_now());
            Some((
                cookie::answer(secret, &presented.client, ip, now),
                cookie::is_valid(secret, &presented, ip, now),
            ))
        }
        None => None,
    };
    let with_ecs = ecs.is_some();
    let (scope, geo, v4, v6): (Option<u8>, _, SmallAddrs<Ipv4Addr>, SmallAddrs<Ipv6Addr>) =
        match target {
            Target::Geo { index, families } => {
                if !families[usize::from(query.qtype == TYPE_AAAA)] {
                    return None;
                }
                let client = Client { src: src.ip(), ecs };
                let (ranking, scope) = answer::decide(data, *index, &client);
                let g = &data.compiled.geo[*index];
                let dcs = &data.compiled.datacenters;
                let (mut v4, mut v6) = (SmallAddrs::new(), SmallAddrs::new());
                // Loops rather than a flat_map: this is the answering path,
                // and the flattening adapter did not inline.
                for &i in &ranking.chosen {
                    match query.qtype {
                        TYPE_A => {
                            let picked = dcs[i].v4_for(ranking.hash);
                            v4.extend(picked.iter().map(|a| (g.ttl, *a)));
                        }
                        _ => {
                            let picked = dcs[i].v6_for(ranking.hash);
                            v6.extend(picked.iter().map(|a| (g.ttl, *a)));
                        }
                    }
                }
                (scope, Some((*index, ranking.chosen)), v4, v6)
            }
            Target::Fixed { a, aaaa } => match query.qtype {
                TYPE_A => (None, None, a.iter().copied().collect(), SmallAddrs::new()),
                _ => (
                    None,
                    None,
                    SmallAddrs::new(),
                    aaaa.iter().copied().collect(),
                ),
            },
        };
    let answers = v4.len() + v6.len();
    // NODATA carries the SOA: the general path's business.
    if answers == 0 {
        return None;
    }
    reply.clear();
    reply.extend_from_slice(&query.id);
    reply.push(0x80 | 0x04 | query.rd);
    reply.push(query.cd);
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&(answers as u16).to_be_bytes());
    reply.extend_from_slice(&0u16.to_be_bytes());
    reply.extend_from_slice(&u16::from(query.edns.is_some()).to_be_bytes());
    reply.extend_from_slice(query.question);
    let mut record = |rtype: u16, ttl: u32, rdata: &[u8]| {
        reply.extend_from_slice(&QUESTION_NAME);
        reply.extend_from_slice(&rtype.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&ttl.to_be_bytes());
        reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        reply.extend_from_slice(rdata);
    };
    for (ttl, addr) in &v4 {
        record(TYPE_A, *ttl, &addr.octets());
    }
    for (ttl, addr) in &v6 {
        record(TYPE_AAAA, *ttl, &addr.octets());
    }
    if let Some(opt) = query.edns {
        reply.push(0);
        reply.extend_from_slice(&TYPE_OPT.to_be_bytes());
        reply.extend_from_slice(&answer::MAX_UDP_PAYLOAD.to_be_bytes());
        reply.extend_from_slice(&[0, 0, opt.dnssec_ok, 0]);
        let option_len = |data: &[u8]| data.len() + 4;
        let rdlen =
            cookie.as_ref().map_or(0, |(c, _)| option_len(c)) + opt.ecs.map_or(0, option_len);
        reply.extend_from_slice(&(rdlen as u16).to_be_bytes());
        // In the general path's order: COOKIE, then Client Subnet.
        if let Some((answer, _)) = &cookie {
            reply.extend_from_slice(&cookie::OPTION_COOKIE.to_be_bytes());
            reply.extend_from_slice(&(answer.len() as u16).to_be_bytes());
            reply.extend_from_slice(answer);
        }
        if let Some(option) = opt.ecs {
            reply.extend_from_slice(&OPTION_ECS.to_be_bytes());
            reply.extend_from_slice(&(option.len() as u16).to_be_bytes());
            let at = reply.len();
            reply.extend_from_slice(option);
            // FAMILY, SOURCE PREFIX and ADDRESS as received; our scope.
            reply[at + 3] = scope.unwrap_or(0);
        }
    }
    // Too big for the client: the general path truncates.
    if reply.len() > usize::from(answer::udp_limit(query.edns.map(|opt| opt.size))) {
        return None;
    }
    let valid_cookie = cookie.is_some_and(|(_, valid)| valid);
    Some(Answered {
        class: classes[usize::from(query.qtype == TYPE_AAAA)].exempt(valid_cookie),
        qtype: if query.qtype == TYPE_A {
            RecordType::A
        } else {
            RecordType::AAAA
        },
        geo,
        ecs: with_ecs,
    })
}

type SmallAddrs<T> = smallvec::SmallVec<[(u32, T); 8]>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::dns::cookie::OPTION_COOKIE;
    use crate::dns::udp::answer_general;
    use crate::dns::{AllUp, DatacenterHealth};

    /// A query as a resolver would send it.
    struct Packet<'n> {
        name: &'n str,
        qtype: u16,
        rd: bool,
        cd: bool,
        /// (UDP size, Client Subnet option data)
        edns: Option<(u16, Option<Vec<u8>>)>,
        /// The OPT's DO bit as in its flags' first byte (0x80 or 0).
        dnssec_ok: u8,
    }

    impl Packet<'_> {
        /// `bytes` with extra EDNS options (code, data) after the ECS one.
        fn with_options(&self, extra: &[(u16, &[u8])]) -> Vec<u8> {
            let mut p = self.bytes();
            if self.edns.is_none() || extra.is_empty() {
                return p;
            }
            let rdlen_at = p.len()
                - 2
                - self
                    .edns
                    .as_ref()
                    .unwrap()
                    .1
                    .as_ref()
                    .map_or(0, |d| d.len() + 4);
            for (code, data) in extra {
                p.extend_from_slice(&code.to_be_bytes());
                p.extend_from_slice(&(data.len() as u16).to_be_bytes());
                p.extend_from_slice(data);
            }
            let rdlen = (p.len() - rdlen_at - 2) as u16;
            p[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
            p
        }

        fn bytes(&self) -> Vec<u8> {
            let mut p = vec![
                0x12,
                0x34,
                u8::from(self.rd),
                if self.cd { 0x10 } else { 0 },
            ];
            p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(self.edns.is_some())]);
            for label in self.name.trim_end_matches('.').split('.') {
                p.push(label.len() as u8);
                p.extend_from_slice(label.as_bytes());
            }
            p.push(0);
            p.extend_from_slice(&self.qtype.to_be_bytes());
            p.extend_from_slice(&CLASS_IN.to_be_bytes());
            if let Some((size, ecs)) = &self.edns {
                p.extend_from_slice(&[0, 0, 41]);
                p.extend_from_slice(&size.to_be_bytes());
                p.extend_from_slice(&[0, 0, self.dnssec_ok, 0]);
                match ecs {
                    Some(data) => {
                        p.extend_from_slice(&(data.len() as u16 + 4).to_be_bytes());
                        p.extend_from_slice(&OPTION_ECS.to_be_bytes());
                        p.extend_from_slice(&(data.len() as u16).to_be_bytes());
                        p.extend_from_slice(data);
                    }
                    None => p.extend_from_slice(&[0, 0]),
                }
            }
            p
        }
    }

    /// A name under `suffix` of `octets` octets in wire form (the root's
    /// length octet counted), in labels of up to 63 octets (`label`
    /// repeated), for `octets` past the suffix's own length plus 1.
    fn long_name(octets: usize, label: char, suffix: &str) -> String {
        let mut rest = octets - (suffix.len() + 1);
        let mut name = String::new();
        while rest > 0 {
            // A label is 1 length octet and 1 to 63 others; leave no 1.
            let take = match rest {
                65 => 63,
                r => r.min(64),
            };
            name.extend(std::iter::repeat_n(label, take - 1));
            name.push('.');
            rest -= take;
        }
        name + suffix
    }

    fn ecs(family: u16, source: u8, address: &[u8]) -> Vec<u8> {
        let mut d = family.to_be_bytes().to_vec();
        d.extend_from_slice(&[source, 0]);
        d.extend_from_slice(address);
        d
    }

    /// Every combination below: whatever the fast path answers is exactly
    /// what the general path answers, and it answers the common ones.
    #[test]
    fn fast_answers_are_the_general_answers_byte_for_byte() {
        // Both paths make server cookies at the same second.
        crate::dns::cookie::pin_now(Some(1_800_000_000));
        let eu_down: Arc<dyn DatacenterHealth> = Arc::new(|i: usize| i != 0);
        let long = |octets, label| long_name(octets, label, "mysite.com.");
        let long_names = [
            // The longest name there is, with an A record; and in another case.
            long(255, 'l'),
            long(255, 'L'),
            long(254, 'x'),
            long(255, 'x'),
            // Past the limit: FORMERR from the general path (a name of 256
            // octets used to panic the fast path).
            long(256, 'x'),
            long(257, 'l'),
            long(300, 'x'),
            // Labels of 63 and 64 octets.
            format!("{}.mysite.com.", "a".repeat(63)),
            format!("{}.mysite.com.", "a".repeat(64)),
        ];
        let names = [
            "api.mysite.com.",
            "API.mysite.com.",
            "two.mysite.com.",
            "ns1.mysite.com.",
            "Ns1.MySite.com.",
            "a.deep.mysite.com.",
            "x.wild.mysite.com.",
            "www.mysite.com.",
            "mysite.com.",
            "nothing.mysite.com.",
            "apex.test.",
            "elsewhere.example.",
            "mapped.mysite.com.",
            "mapped-cidr.mysite.com.",
        ]
        .into_iter()
        .chain(long_names.iter().map(String::as_str));
        let edns = [
            None,
            Some((512, None)),
            Some((100, None)),
            Some((1232, Some(ecs(1, 24, &[81, 2, 69])))),
            Some((4096, Some(ecs(1, 32, &[175, 16, 199, 0])))),
            Some((1232, Some(ecs(2, 56, &[0x24, 0x0, 0x1, 0x0, 0, 0, 0])))),
            Some((1232, Some(ecs(1, 0, &[])))),
            Some((1232, Some(ecs(1, 20, &[81, 2, 64])))),
            // Malformed: bits past the source prefix (FORMERR).
            Some((1232, Some(ecs(1, 20, &[81, 2, 69])))),
        ];
        let sources = [
            "192.0.2.200:5353",
            "81.2.69.160:53",
            "10.1.2.3:53",
            "[2001:db8::1]:53",
            "[::ffff:81.2.69.160]:53",
        ];
        let cookie: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8];
        let option_sets: [&[(u16, &[u8])]; 7] = [
            &[],
            &[(OPTION_COOKIE, cookie)],
            &[(OPTION_PADDING, &[0; 7]), (OPTION_COOKIE, &[9; 24])],
            // Malformed (FORMERR), twice, a server cookie of another length.
            &[(OPTION_COOKIE, &[1; 5])],
            &[(OPTION_COOKIE, cookie), (OPTION_COOKIE, cookie)],
            &[(OPTION_COOKIE, &[3; 40])],
            // NSID and an unknown option: the general path's.
            &[(3, &[]), (65001, &[1, 2])],
        ];
        let mut fast_answers = 0;
        let mut fast_mapped = 0;
        let mut total = 0;
        for health in [Arc::new(AllUp) as Arc<dyn DatacenterHealth>, eu_down] {
            let data =
                crate::dns::answer::tests::data_with(crate::dns::answer::tests::POLICIES, health);
            for name in names.clone() {
                for qtype in [TYPE_A, TYPE_AAAA, 16, 255] {
                    for edns in &edns {
                        for (rd, cd, dnssec_ok) in [(true, false, 0x80), (false, true, 0)] {
                            for (src, options) in sources
                                .iter()
                                .flat_map(|s| option_sets.iter().map(move |o| (*s, *o)))
                            {
                                let src: SocketAddr = src.parse().unwrap();
                                let packet = Packet {
                                    name,
                                    qtype,
                                    rd,
                                    cd,
                                    edns: edns.clone(),
                                    dnssec_ok,
                                }
                                .with_options(options);
                                total += 1;
                                let mut fast = Vec::new();
                                let Some(answered) = answer(&data, &packet, src, &mut fast) else {
                                    continue;
                                };
                                fast_answers += 1;
                                fast_mapped += usize::from(name.starts_with("mapped"));
                                let mut general = Vec::new();
                                let class = answer_general(&data, &packet, src, &mut general);
                                let case =
                                    format!("{name} type {qtype} edns {edns:?} rd {rd} from {src}");
                                assert_eq!(fast, general, "{case}");
                                // RRL counts both paths' answers alike.
                                assert_eq!(Some(answered.class), class, "{case}");
                            }
                        }
                    }
                }
            }
        }
        assert!(fast_answers > 0 && fast_answers < total);
        assert!(fast_mapped > 0, "names with maps take the fast path too");

        // A valid server cookie: the same bytes, and exempt from RRL on both.
        let data = crate::dns::answer::tests::data(Arc::new(AllUp));
        let src: SocketAddr = "192.0.2.200:5353".parse().unwrap();
        let client = [5u8; 8];
        let mut presented = client.to_vec();
        presented.extend(crate::dns::cookie::server_cookie(
            &data.compiled.cookie_secret,
            &client,
            src.ip(),
            1_800_000_000 - 600,
        ));
        let packet = Packet {
            name: "api.mysite.com.",
            qtype: TYPE_A,
            rd: true,
            cd: false,
            edns: edns[3].clone(),
            dnssec_ok: 0x80,
        }
        .with_options(&[(OPTION_COOKIE, &presented)]);
        let (mut fast, mut general) = (Vec::new(), Vec::new());
        let answered = answer(&data, &packet, src, &mut fast).expect("the fast path's");
        let class = answer_general(&data, &packet, src, &mut general).unwrap();
        assert_eq!(fast, general);
        assert!(answered.class.exempt && class.exempt);
        // The reply's OPT: COOKIE (client cookie, a fresh server cookie), then ECS.
        let cookie_at = fast.len() - (4 + 24) - (4 + 7);
        assert_eq!(fast[cookie_at..cookie_at + 4], [0, 10, 0, 24]);
        assert_eq!(fast[cookie_at + 4..cookie_at + 12], client);
        assert_eq!(
            fast[cookie_at + 12..cookie_at + 28],
            crate::dns::cookie::server_cookie(
                &data.compiled.cookie_secret,
                &client,
                src.ip(),
                1_800_000_000
            )
        );

        // The common queries do take the fast path.
        let data = crate::dns::answer::tests::data(Arc::new(AllUp));
        let src: SocketAddr = "192.0.2.200:5353".parse().unwrap();
        for (name, qtype, edns) in [
            ("api.mysite.com.", TYPE_A, None),
            ("api.mysite.com.", TYPE_A, edns[3].clone()),
            ("api.mysite.com.", TYPE_AAAA, edns[5].clone()),
            ("ns1.mysite.com.", TYPE_A, edns[1].clone()),
            (&long_names[0], TYPE_A, edns[3].clone()),
        ] {
            let packet = Packet {
                name,
                qtype,
                rd: false,
                cd: false,
                edns,
                dnssec_ok: 0,
            };
            let mut reply = Vec::new();
            assert!(
                answer(&data, &packet.bytes(), src, &mut reply).is_some(),
                "{name} {qtype}"
            );
        }

        // An NSID option, or class CH, is the general path's to answer.
        let packet = Packet {
            name: "api.mysite.com.",
            qtype: TYPE_A,
            rd: false,
            cd: false,
            edns: edns[3].clone(),
            dnssec_ok: 0,
        };
        let nsid = packet.with_options(&[(crate::dns::identity::OPTION_NSID, &[])]);
        let mut chaos = packet.bytes();
        let class_at = 12 + "api.mysite.com.".len() + 1 + 2;
        chaos[class_at..class_at + 2].copy_from_slice(&3u16.to_be_bytes());
        for query in [nsid, chaos] {
            let mut reply = Vec::new();
            assert!(answer(&data, &query, src, &mut reply).is_none());
            assert!(answer_general(&data, &query, src, &mut reply).is_some());
        }
    }

    /// A query for `name` (wire form) of type A, without EDNS.
    fn raw_query(name: &[u8]) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        p.extend_from_slice(name);
        p.extend_from_slice(&[0, 1, 0, 1]);
        p
    }

    /// `raw_query` with an OPT record (1232 bytes, no option).
    fn raw_query_edns(name: &[u8]) -> Vec<u8> {
        let mut p = raw_query(name);
        p[11] = 1;
        p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        p
    }

    fn wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.trim_end_matches('.').split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    /// Names at and past the 255-octet limit, long labels and compression
    /// pointers in the question: whatever the fast path answers is the
    /// general path's answer, and the rest is the general path's (FORMERR
    /// past the limits), never a panic.
    #[test]
    fn names_at_the_limits_and_pointers_are_the_general_paths() {
        const NOERROR: u8 = 0;
        const FORMERR: u8 = 1;
        const NXDOMAIN: u8 = 3;
        const REFUSED: u8 = 5;
        let data = crate::dns::answer::tests::data(Arc::new(AllUp));
        let src: SocketAddr = "192.0.2.200:5353".parse().unwrap();
        // The query that panicked the fast path: labels of 63, 63, 63 and
        // 62 octets, 256 octets with the root's, which it counted only
        // after checking the length.
        let mut crashed = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for len in [63u8, 63, 63, 62] {
            crashed.push(len);
            crashed.extend(std::iter::repeat_n(b'a', len.into()));
        }
        crashed.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(crashed.len(), 12 + 256 + 4);
        let long = |octets, label| wire(&long_name(octets, label, "mysite.com."));
        // (query, the general path's rcode)
        let cases: Vec<(Vec<u8>, u8)> = vec![
            (crashed, FORMERR),
            (raw_query_edns(&long(255, 'l')), NOERROR),
            // Without EDNS too: the owner is a pointer, 287 bytes in all.
            (raw_query(&long(255, 'l')), NOERROR),
            (raw_query(&long(254, 'x')), NXDOMAIN),
            (raw_query(&long(255, 'x')), NXDOMAIN),
            (raw_query(&long(256, 'x')), FORMERR),
            (raw_query(&long(256, 'l')), FORMERR),
            (raw_query(&long(257, 'x')), FORMERR),
            (raw_query(&long(300, 'x')), FORMERR),
            (raw_query(&wire(&long_name(255, 'a', ""))), REFUSED),
            (
                raw_query(&wire(&format!("{}.mysite.com.", "a".repeat(63)))),
                NXDOMAIN,
            ),
            (
                raw_query(&wire(&format!("{}.mysite.com.", "a".repeat(64)))),
                FORMERR,
            ),
            // Pointers: to itself, into the header, forward, past the end,
            // after a label back to the name's start.
            (raw_query(&[0xc0, 12]), FORMERR),
            (raw_query(&[0xc0, 0]), FORMERR),
            (raw_query(&[0xc0, 14]), FORMERR),
            (raw_query(&[0xff, 0xff]), FORMERR),
            (raw_query(&[3, b'a', b'p', b'i', 0xc0, 12]), FORMERR),
            // The reserved label types 01 and 10.
            (raw_query(&[0x40, 0]), FORMERR),
            (raw_query(&[0x80, 0]), FORMERR),
        ];
        for (packet, rcode) in cases {
            let mut fast = Vec::new();
            let fast_answered = answer(&data, &packet, src, &mut fast).is_some();
            let mut general = Vec::new();
            assert!(answer_general(&data, &packet, src, &mut general).is_some());
            assert_eq!(general[..2], [0x12, 0x34], "{packet:02x?}");
            assert_eq!(general[3] & 0x0f, rcode, "{packet:02x?}");
            if fast_answered {
                assert_eq!(fast, general, "{packet:02x?}");
            }
            // Only the name with a record is the fast path's, whole.
            let whole = general[2] & 0x02 == 0 && general[7] == 1;
            assert_eq!(fast_answered, whole, "{packet:02x?}");
            assert_eq!(whole, rcode == NOERROR, "{packet:02x?}");
        }
    }

    /// Damaged queries (every prefix, every byte changed a few ways) are
    /// answered or dropped by both paths, never a panic.
    #[test]
    fn damaged_queries_never_panic() {
        let data = crate::dns::answer::tests::data(Arc::new(AllUp));
        let src: SocketAddr = "192.0.2.200:5353".parse().unwrap();
        let cookie: &[u8] = &[7; 8];
        let packets = [
            Packet {
                name: "api.mysite.com.",
                qtype: TYPE_A,
                rd: true,
                cd: false,
                edns: Some((1232, Some(ecs(1, 24, &[81, 2, 69])))),
                dnssec_ok: 0x80,
            }
            .with_options(&[(OPTION_COOKIE, cookie)]),
            Packet {
                name: "ns1.mysite.com.",
                qtype: TYPE_AAAA,
                rd: false,
                cd: true,
                edns: None,
                dnssec_ok: 0,
            }
            .bytes(),
        ];
        let mut reply = Vec::new();
        for valid in &packets {
            let mut damaged: Vec<Vec<u8>> = (0..valid.len()).map(|n| valid[..n].to_vec()).collect();
            for i in 0..valid.len() {
                for change in [0x00, 0xff, 0x80, 0x3f, 0xc0] {
                    let mut p = valid.clone();
                    p[i] = change;
                    damaged.push(p);
                }
            }
            for p in &damaged {
                let _ = answer(&data, p, src, &mut reply);
                let _ = answer_general(&data, p, src, &mut reply);
            }
        }
    }

    /// A signed zone's DO = 1 queries need RRSIGs, which only the general
    /// path adds; DO = 0 ones stay here, and so do unsigned zones'.
    #[test]
    fn dnssec_ok_queries_for_signed_zones_go_to_the_general_path() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("csk.pem");
        let made = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(made.success());
        let text = format!(
            r#"
[dns]
listen = ["127.0.0.1:0"]

[[dns.zone]]
origin = "signed.test"
soa = {{ mname = "ns1.signed.test.", rname = "h.signed.test.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }}
ns = ["ns1.signed.test."]
records = [{{ name = "ns1", type = "A", value = "192.0.2.53" }}]
dnssec = {{ keys = [{{ file = "{}", role = "csk" }}] }}

[[dns.zone]]
origin = "plain.test"
soa = {{ mname = "ns1.plain.test.", rname = "h.plain.test.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }}
ns = ["ns1.plain.test."]
records = [{{ name = "ns1", type = "A", value = "192.0.2.54" }}]
"#,
            key.display()
        );
        let config =
            crate::config::parse_str(&text, std::path::Path::new("/tmp/geolb.toml")).unwrap();
        let locator = Arc::new(crate::geoip::Locator::new(None, &[]));
        let data = crate::dns::compile(&config, locator, Arc::new(AllUp)).unwrap();
        let src: SocketAddr = "192.0.2.9:5300".parse().unwrap();
        let packet = |name, dnssec_ok| {
            Packet {
                name,
                qtype: TYPE_A,
                rd: false,
                cd: false,
                edns: Some((1232, None)),
                dnssec_ok,
            }
            .bytes()
        };
        let mut reply = Vec::new();
        let fast = |p: &[u8], reply: &mut Vec<u8>| answer(&data, p, src, reply).is_some();
        assert!(!fast(&packet("ns1.signed.test", 0x80), &mut reply));
        assert!(fast(&packet("ns1.signed.test", 0), &mut reply));
        assert!(fast(&packet("ns1.plain.test", 0x80), &mut reply));
        answer_general(&data, &packet("ns1.signed.test", 0x80), src, &mut reply).unwrap();
        let m = hickory_proto::op::Message::from_vec(&reply).unwrap();
        let types: Vec<RecordType> = m.answers.iter().map(|r| r.record_type()).collect();
        assert_eq!(types, [RecordType::A, RecordType::RRSIG]);
    }
}
