//! Zone transfers to secondaries over TCP: AXFR (RFC 5936) and IXFR
//! (RFC 1995), behind each zone's `transfer` ACL and key, every message
//! TSIG-signed when the request was (RFC 8945 §5.3.1).
//!
//! - A zone's transferable content is a [`Version`]: its records in
//!   canonical order, geo names as their configured-order answer (the
//!   first `answers` of `datacenters`, health ignored: a secondary holds
//!   static data and cannot follow the health of the data centers, so it
//!   gets the answer a client of unknown location gets when all is up).
//! - [`History`]: the last `ixfr_versions` versions of each zone, carried
//!   from one [`DnsData`] to the next by [`DnsData::continue_from`]; IXFR
//!   sends the difference between the client's version and the current
//!   one as one condensed sequence, the whole zone when the client's
//!   serial is not kept, the SOA alone when it is current.
//! - A reload that changes the content of a zone with `transfer` but not
//!   its serial is refused (geolb does not invent serials, as Knot's
//!   `serial-policy` would): a secondary must never get different data
//!   under a serial it has. A zone without `transfer` has no secondaries
//!   to mislead, so there the new content simply replaces the old.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use hickory_proto::op::{LowerQuery, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;

use super::answer::{self, Reply};
use super::geo::{Datacenter, GeoName};
use super::tsig::{self, Check, Signed};
use super::zone::Zones;
use super::{DnsData, count};
use crate::config::{Cidr, ConfigError, DnsConfig};
use crate::metrics::DNS_TRANSFERS;

/// Answer bytes per message: well under 64 KiB, so that a message is
/// never cut and a slow secondary gets data early.
const MESSAGE_TARGET: u16 = 16 * 1024;

/// A zone's content at one serial.
#[derive(Debug)]
pub(crate) struct Version {
    pub serial: u32,
    pub soa: Record,
    /// Every record but the SOA, in canonical order (RFC 4034 §6.3, TTL
    /// included).
    pub records: Vec<Record>,
}

impl Version {
    fn same_content(&self, other: &Version) -> bool {
        self.soa.ttl == other.soa.ttl
            && self.soa.data == other.soa.data
            && self.records.len() == other.records.len()
            && self
                .records
                .iter()
                .zip(&other.records)
                .all(|(a, b)| a.cmp(b).is_eq())
    }
}

/// Who may transfer a zone, and whom to tell it changed.
#[derive(Debug)]
pub(crate) struct Policy {
    /// The zone's index in `[[dns.zone]]`, for errors.
    pub index: usize,
    pub origin: Name,
    pub allow: Vec<Cidr>,
    pub key: Option<Arc<tsig::Key>>,
    pub notify: Vec<SocketAddr>,
}

/// Each zone's versions, oldest first; the last is the one served.
#[derive(Debug, Default)]
pub(crate) struct History {
    zones: HashMap<LowerName, Vec<Arc<Version>>>,
}

impl History {
    pub(crate) fn current(&self, origin: &LowerName) -> Option<&Arc<Version>> {
        self.zones.get(origin).and_then(|v| v.last())
    }
}

/// The versions and policies of every zone of `dns`, as compiled.
pub(crate) fn compile(
    dns: &DnsConfig,
    zones: &Zones,
    geo: &[GeoName],
    datacenters: &[Datacenter],
    keys: &[Arc<tsig::Key>],
) -> (History, HashMap<LowerName, Policy>) {
    let mut history = History::default();
    let mut policies = HashMap::new();
    for zone in zones.iter() {
        let Some(soa) = zone.soa() else { continue };
        let mut records: Vec<Record> = zone
            .nodes()
            .flat_map(|(_, node)| node.rrsets.iter())
            .filter(|set| set.rtype != RecordType::SOA)
            .flat_map(|set| set.records.iter().cloned())
            .collect();
        for index in zone.geo_indexes() {
            records.extend(geo_records(&geo[index], datacenters));
        }
        records.sort();
        let serial = match &soa.data {
            RData::SOA(s) => s.serial,
            _ => 0,
        };
        let version = Version {
            serial,
            soa: soa.clone(),
            records,
        };
        let origin = LowerName::from(&zone.origin);
        history
            .zones
            .insert(origin.clone(), vec![Arc::new(version)]);
        let found = dns
            .zones
            .iter()
            .enumerate()
            .find(|(_, z)| Name::from_ascii(&z.origin).is_ok_and(|n| n == zone.origin));
        if let Some((index, config)) = found {
            let transfer = config.transfer.as_ref();
            policies.insert(
                origin,
                Policy {
                    index,
                    origin: zone.origin.clone(),
                    allow: transfer.map(|t| t.allow.clone()).unwrap_or_default(),
                    key: transfer
                        .and_then(|t| t.key.as_ref())
                        .and_then(|k| keys.iter().find(|key| key.name.to_ascii() == *k))
                        .cloned(),
                    notify: config.notify.clone(),
                },
            );
        }
    }
    (history, policies)
}

/// A geo name's records for secondaries: the configured order's first
/// `answers` data centers, their addresses.
fn geo_records(geo: &GeoName, datacenters: &[Datacenter]) -> Vec<Record> {
    let chosen = geo
        .candidates
        .iter()
        .take(geo.answers)
        .map(|&i| &datacenters[i]);
    let mut records = Vec::new();
    for dc in chosen {
        for v4 in &dc.v4 {
            records.push(Record::from_rdata(
                geo.name.clone(),
                geo.ttl,
                RData::A(A(*v4)),
            ));
        }
        for v6 in &dc.v6 {
            records.push(Record::from_rdata(
                geo.name.clone(),
                geo.ttl,
                RData::AAAA(AAAA(*v6)),
            ));
        }
    }
    records
}

/// The history `new` continues from `previous`, and the zones whose
/// serial changed (or that are new): those to NOTIFY. Errors name the
/// serial of a zone whose content changed under the same serial.
pub(crate) fn continue_from(
    previous: &History,
    new: &History,
    policies: &HashMap<LowerName, Policy>,
    keep: usize,
) -> Result<(History, Vec<LowerName>), Vec<ConfigError>> {
    let mut merged = History::default();
    let mut changed = Vec::new();
    let mut errors = Vec::new();
    for (origin, versions) in &new.zones {
        let Some(version) = versions.last() else {
            continue;
        };
        let mut kept = previous.zones.get(origin).cloned().unwrap_or_default();
        // Without secondaries nobody holds a serial's data: a change under
        // the same serial only replaces it.
        let transferred = policies.get(origin).is_some_and(|p| !p.allow.is_empty());
        match kept.last() {
            Some(last) if last.serial == version.serial && !transferred => {
                if !last.same_content(version) {
                    kept = vec![version.clone()];
                }
            }
            Some(last) if last.serial == version.serial => {
                if !last.same_content(version) {
                    let index = policies.get(origin).map_or(0, |p| p.index);
                    errors.push(ConfigError::at(
                        format!("dns.zone[{index}].soa.serial"),
                        format_args!(
                            "the zone's records changed but its serial is still {}: raise \
                             the serial (secondaries keep a serial's data and would not see \
                             the change)",
                            version.serial
                        ),
                    ));
                }
                // Unchanged: the old version (the same data) stays.
            }
            _ => {
                // A serial seen before (a rollback) starts the list anew:
                // a client at it must not get a diff from other data.
                kept.retain(|v| v.serial != version.serial);
                kept.push(version.clone());
                let excess = kept.len().saturating_sub(keep.max(1));
                kept.drain(..excess);
                changed.push(origin.clone());
            }
        }
        merged.zones.insert(origin.clone(), kept);
    }
    if errors.is_empty() {
        Ok((merged, changed))
    } else {
        Err(errors)
    }
}

/// RFC 1982: whether serial `a` is after `b`.
fn serial_after(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

/// What a transfer request came to, for the metric.
#[derive(Clone, Copy)]
enum Outcome {
    /// The whole zone (AXFR, or IXFR from a serial not kept).
    Full,
    Incremental,
    UpToDate,
    Refused,
}

/// The messages answering `message` when it asks for a zone transfer
/// geolb serves (None: the general path answers it, refusals included).
pub(super) fn answer(data: &DnsData, message: &[u8], src: SocketAddr) -> Option<Vec<Vec<u8>>> {
    if !asks_transfer(message) {
        return None;
    }
    let request = Request::from_bytes(message.to_vec(), src, Protocol::Tcp).ok()?;
    let [query] = request.queries.queries() else {
        return None;
    };
    let kind = match query.query_type() {
        RecordType::AXFR => "axfr",
        RecordType::IXFR => "ixfr",
        _ => return None,
    };
    if query.query_class() != DNSClass::IN || request.edns.as_ref().is_some_and(|e| e.version() > 0)
    {
        return None;
    }
    let signed = match tsig::check(&data.compiled.keys, message, tsig::now()) {
        Check::Unsigned => None,
        Check::Valid(signed) => Some(signed),
        // Errors are answered by the general path.
        _ => return None,
    };
    let origin = query.name();
    let policy = data.compiled.transfer.get(origin)?;
    let version = data.history.current(origin)?;
    if !allowed(policy, src.ip(), signed.as_ref()) {
        refused(policy, kind, src.ip(), signed.is_some());
        return None;
    }
    let (records, outcome) = match query.query_type() {
        RecordType::IXFR => ixfr(data, &request, origin, version),
        _ => (full(version), Outcome::Full),
    };
    count_transfer(&policy.origin, kind, outcome);
    tracing::debug!(zone = %policy.origin, %src, kind, serial = version.serial, "zone transfer");
    let messages = split(&request, query, &records, signed.as_ref());
    count::count_transfer_query(query.query_type());
    Some(messages)
}

/// A quick look at the question's type, before any parsing: a query
/// (QR clear, opcode QUERY) of one question of type AXFR or IXFR.
fn asks_transfer(message: &[u8]) -> bool {
    if message.len() < 12 || message[2] & 0xf8 != 0 || message[4..6] != [0, 1] {
        return false;
    }
    let mut at = 12;
    while let Some(&len) = message.get(at) {
        if len == 0 {
            let qtype = message.get(at + 1..at + 3);
            return matches!(qtype, Some([0, 251 | 252]));
        }
        if len & 0xc0 != 0 {
            return false;
        }
        at += 1 + usize::from(len);
    }
    false
}

fn allowed(policy: &Policy, ip: IpAddr, signed: Option<&Signed>) -> bool {
    let ip = ip.to_canonical();
    let from = policy.allow.iter().any(|net| net.contains(ip));
    let keyed = match &policy.key {
        None => true,
        Some(key) => signed.is_some_and(|s| Arc::ptr_eq(&s.key, key)),
    };
    from && keyed
}

/// Clients already logged as refused: one line each, up to this many.
const REFUSALS_LOGGED: usize = 1024;

fn refused(policy: &Policy, kind: &'static str, ip: IpAddr, signed: bool) {
    count_transfer(&policy.origin, kind, Outcome::Refused);
    static LOGGED: OnceLock<Mutex<HashSet<IpAddr>>> = OnceLock::new();
    let mut logged = crate::locked(LOGGED.get_or_init(Default::default));
    if logged.len() < REFUSALS_LOGGED && logged.insert(ip) {
        let why = if policy.allow.is_empty() {
            "the zone has no transfer allow list"
        } else if policy.key.is_some() && !signed {
            "not signed with the zone's transfer key (or not from an allowed network)"
        } else {
            "not from a network in the zone's transfer allow list, or not with its key"
        };
        tracing::info!(zone = %policy.origin, client = %ip, kind, why, "zone transfer refused (logged once per client)");
    }
}

fn count_transfer(zone: &Name, kind: &'static str, outcome: Outcome) {
    let result = match outcome {
        Outcome::Full => "full",
        Outcome::Incremental => "incremental",
        Outcome::UpToDate => "up_to_date",
        Outcome::Refused => "refused",
    };
    metrics::counter!(DNS_TRANSFERS, "zone" => zone.to_ascii(), "kind" => kind, "result" => result)
        .increment(1);
}

/// The whole zone: SOA, every record, SOA (RFC 5936 §2.2).
fn full(version: &Version) -> Vec<Record> {
    let mut records = Vec::with_capacity(version.records.len() + 2);
    records.push(version.soa.clone());
    records.extend(version.records.iter().cloned());
    records.push(version.soa.clone());
    records
}

/// RFC 1995 §4: the client's SOA is in the authority section.
fn ixfr(
    data: &DnsData,
    request: &Request,
    origin: &LowerName,
    version: &Version,
) -> (Vec<Record>, Outcome) {
    let theirs = request.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) if LowerName::from(&r.name) == *origin => Some(soa.serial),
        _ => None,
    });
    let Some(theirs) = theirs else {
        return (full(version), Outcome::Full);
    };
    if theirs == version.serial || serial_after(theirs, version.serial) {
        return (vec![version.soa.clone()], Outcome::UpToDate);
    }
    let versions = data
        .history
        .zones
        .get(origin)
        .map_or(&[][..], Vec::as_slice);
    let Some(old) = versions.iter().find(|v| v.serial == theirs) else {
        return (full(version), Outcome::Full);
    };
    let (deleted, added) = difference(&old.records, &version.records);
    let mut records = Vec::with_capacity(deleted.len() + added.len() + 4);
    records.push(version.soa.clone());
    records.push(old.soa.clone());
    records.extend(deleted.into_iter().cloned());
    records.push(version.soa.clone());
    records.extend(added.into_iter().cloned());
    records.push(version.soa.clone());
    (records, Outcome::Incremental)
}

/// The records only in `old` and those only in `new`, both sorted.
fn difference<'r>(old: &'r [Record], new: &'r [Record]) -> (Vec<&'r Record>, Vec<&'r Record>) {
    let (mut deleted, mut added) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) => match a.cmp(b) {
                std::cmp::Ordering::Less => {
                    deleted.push(a);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    added.push(b);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                }
            },
            (Some(a), None) => {
                deleted.push(a);
                i += 1;
            }
            (None, Some(b)) => {
                added.push(b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (deleted, added)
}

/// `records` as answer messages to `request`, each with the question,
/// each signed (chained) when the request was.
fn split(
    request: &Request,
    query: &LowerQuery,
    records: &[Record],
    signed: Option<&Signed>,
) -> Vec<Vec<u8>> {
    let questions = std::slice::from_ref(query);
    let room = u16::MAX - signed.map_or(0, |s| s.size() as u16);
    let dnssec_ok = request.edns.as_ref().map(|e| e.flags().dnssec_ok);
    let reply = |records: &[Record]| {
        let mut reply = Reply::empty(&request.metadata, dnssec_ok);
        reply.metadata.authoritative = true;
        reply.answers = records.to_vec();
        reply
    };
    let mut messages = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let batch = &records[at..records.len().min(at + 1000)];
        let mut bytes = Vec::new();
        // How many fit the target size; one at least, if it fits at all.
        let fit = [MESSAGE_TARGET, room].into_iter().find_map(|max| {
            bytes.clear();
            let header = answer::encode_into(&reply(batch), questions, max, &mut bytes).ok()?;
            Some(usize::from(header.counts.answers)).filter(|n| *n > 0)
        });
        let Some(fit) = fit else {
            // A record over 64 KiB cannot be sent: end with SERVFAIL.
            let mut failed = reply(&[]);
            failed.metadata.response_code = ResponseCode::ServFail;
            bytes.clear();
            let _ = answer::encode_into(&failed, questions, room, &mut bytes);
            messages.push(bytes);
            crate::log_limited!(
                warn,
                "a record of a transferred zone does not fit a message"
            );
            break;
        };
        bytes.clear();
        let _ = answer::encode_into(&reply(&batch[..fit]), questions, room, &mut bytes);
        messages.push(bytes);
        at += fit;
    }
    if let Some(signed) = signed {
        let now = tsig::now();
        let mut mac = signed.mac.clone();
        for (i, message) in messages.iter_mut().enumerate() {
            let chain = if i == 0 {
                tsig::Chain::Answer(&mac)
            } else {
                tsig::Chain::Next(&mac)
            };
            mac = tsig::sign(message, &signed.key, chain, now, None, Vec::new());
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_in_sequence_space() {
        assert!(serial_after(2, 1));
        assert!(serial_after(0, u32::MAX));
        assert!(!serial_after(1, 2));
        assert!(!serial_after(5, 5));
    }

    #[test]
    fn transfer_questions_are_seen_on_the_wire() {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        let bytes = |t| {
            let mut m = Message::new(1, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(Name::from_ascii("mysite.com.").unwrap(), t));
            m.to_vec().unwrap()
        };
        assert!(asks_transfer(&bytes(RecordType::AXFR)));
        assert!(asks_transfer(&bytes(RecordType::IXFR)));
        assert!(!asks_transfer(&bytes(RecordType::A)));
        assert!(!asks_transfer(&[0; 11]));
    }

    #[test]
    fn new_records_under_the_same_serial_are_refused_only_where_transferred() {
        let name = Name::from_ascii("mysite.com.").unwrap();
        let origin = LowerName::from(&name);
        let history = |serial: u32, last: u8| {
            let soa =
                hickory_proto::rr::rdata::SOA::new(name.clone(), name.clone(), serial, 1, 1, 1, 1);
            let version = Version {
                serial,
                soa: Record::from_rdata(name.clone(), 60, RData::SOA(soa)),
                records: vec![Record::from_rdata(
                    name.clone(),
                    60,
                    RData::A(A::new(192, 0, 2, last)),
                )],
            };
            History {
                zones: HashMap::from([(origin.clone(), vec![Arc::new(version)])]),
            }
        };
        let policies = |allow: Vec<Cidr>| {
            let policy = Policy {
                index: 3,
                origin: name.clone(),
                allow,
                key: None,
                notify: Vec::new(),
            };
            HashMap::from([(origin.clone(), policy)])
        };
        let open = policies(vec![Cidr {
            addr: "127.0.0.0".parse().unwrap(),
            prefix: 8,
        }]);
        let errors = continue_from(&history(1, 1), &history(1, 2), &open, 10).unwrap_err();
        assert_eq!(errors[0].path, "dns.zone[3].soa.serial");
        // Unchanged: nothing to notify; a new serial: kept after the old.
        let (_, changed) = continue_from(&history(1, 1), &history(1, 1), &open, 10).unwrap();
        assert!(changed.is_empty());
        let (kept, changed) = continue_from(&history(1, 1), &history(2, 2), &open, 10).unwrap();
        assert_eq!(changed, std::slice::from_ref(&origin));
        let serials: Vec<u32> = kept.zones[&origin].iter().map(|v| v.serial).collect();
        assert_eq!(serials, [1, 2]);
        let (kept, _) = continue_from(&kept, &history(3, 3), &open, 2).unwrap();
        let serials: Vec<u32> = kept.zones[&origin].iter().map(|v| v.serial).collect();
        assert_eq!(serials, [2, 3], "ixfr_versions = 2");
        // Without transfer the new records replace the old.
        let (kept, _) =
            continue_from(&history(1, 1), &history(1, 2), &policies(Vec::new()), 10).unwrap();
        assert_eq!(
            kept.zones[&origin][0].records[0].data.to_string(),
            "192.0.2.2"
        );
    }

    #[test]
    fn the_difference_of_sorted_records() {
        let r = |last: u8, ttl| {
            Record::from_rdata(
                Name::from_ascii("a.mysite.com.").unwrap(),
                ttl,
                RData::A(A::new(192, 0, 2, last)),
            )
        };
        let mut old = vec![r(1, 60), r(2, 60), r(3, 60)];
        let mut new = vec![r(2, 60), r(3, 30), r(4, 60)];
        old.sort();
        new.sort();
        let (deleted, added) = difference(&old, &new);
        let show = |v: Vec<&Record>| -> Vec<String> {
            v.iter().map(|r| format!("{} {}", r.data, r.ttl)).collect()
        };
        assert_eq!(show(deleted), ["192.0.2.1 60", "192.0.2.3 60"]);
        assert_eq!(show(added), ["192.0.2.3 30", "192.0.2.4 60"]);
    }
}
