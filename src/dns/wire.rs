//! A DNS message's bytes in, the reply's bytes out, counted: the general
//! path of both transports (over UDP for what the fast path leaves, over
//! TCP for every message), and the catching of panics while answering.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Once;
use std::time::{Duration, Instant};

use hickory_proto::op::{Header, LowerQuery, MessageType, Metadata, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;

use super::answer;
use super::count::{Tally, count_malformed};
use super::querylog;
use super::rrl::Class;
use super::{DnsData, ecs, identity};

/// Writes the reply to `message` (from `src` over `protocol`) into
/// `reply`, sized for the transport, and counts it; returns what the reply
/// is as RRL sees it, or None when nothing is to be sent: a message
/// without a whole header, a response.
pub(super) fn answer(
    data: &DnsData,
    message: &[u8],
    src: SocketAddr,
    protocol: Protocol,
    reply: &mut Vec<u8>,
) -> Option<Class> {
    answer_telling_reuse(data, message, src, protocol, reply).map(|(class, _)| class)
}

/// [`answer`], and with a reply that the same message bytes (but for the
/// id) would get again from this config (`Reply::reusable`), what it was
/// counted as.
pub(super) fn answer_telling_reuse(
    data: &DnsData,
    message: &[u8],
    src: SocketAddr,
    protocol: Protocol,
    reply: &mut Vec<u8>,
) -> Option<(Class, Option<Tally>)> {
    let parsed = Request::from_bytes(message.to_vec(), src, protocol)
        .map_err(|e| e.to_string())
        .and_then(|request| match message_end(message) {
            Some(end) if end == message.len() => Ok(request),
            // hickory-proto stops at the last record it was told of; BIND
            // and Knot refuse what follows it.
            _ => Err("bytes after the message's last record".to_string()),
        });
    let request = match parsed {
        Ok(request) => request,
        Err(error) => {
            // Without a whole header there is no id to answer to.
            let header = Header::read(&mut BinDecoder::new(message)).ok()?;
            // Nor to a response, parsable or not (no reflection).
            if header.metadata.message_type != MessageType::Query {
                return None;
            }
            tracing::debug!(%src, %error, "FORMERR: unparsable query");
            form_error(data, &header.metadata, message, protocol, reply);
            count_malformed();
            if data.query_log_due() {
                querylog::log(data, message, src, protocol_name(protocol), reply, None);
            }
            return Some((Class::error(), None));
        }
    };
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let built = answer::build(data, &request);
    let tally = Tally::of(&request, &built);
    tally.count(data, built.geo.as_ref());
    let reuse = built.reusable.then_some(tally);
    let query = request.queries.queries().first();
    let class = Class::of_response(
        built.metadata.response_code,
        built.wildcard.as_ref().or(query.map(|q| &**q.name())),
        query.map_or(0, |q| q.query_type().into()),
        built.authorities.first().map(|soa| &soa.name),
    )
    .exempt(built.valid_cookie);
    let logged = data.query_log_due().then(|| built.geo.clone());
    answer::encode_sized(built, &request, reply);
    if let Some(geo) = logged {
        let protocol = protocol_name(protocol);
        querylog::log(data, message, src, protocol, reply, geo.as_ref());
    }
    Some((class, reuse))
}

/// Where `message` ends by its header's counts: past its questions and
/// records; None if it is shorter than they say.
fn message_end(message: &[u8]) -> Option<usize> {
    let count = |at: usize| -> Option<usize> {
        Some(u16::from_be_bytes([*message.get(at)?, *message.get(at + 1)?]) as usize)
    };
    let (questions, records) = (count(4)?, count(6)? + count(8)? + count(10)?);
    let name_end = |mut at: usize| -> Option<usize> {
        loop {
            let len = *message.get(at)?;
            match len {
                0 => return Some(at + 1),
                0xc0.. => return Some(at + 2),
                _ => at += 1 + len as usize,
            }
        }
    };
    let mut at = 12;
    for _ in 0..questions {
        at = name_end(at)? + 4;
    }
    for _ in 0..records {
        at = name_end(at)? + 8;
        at += 2 + count(at)?;
    }
    (at <= message.len()).then_some(at)
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        _ => "udp",
    }
}

/// A reply to a message hickory-proto could not parse: its id, opcode, RD
/// and CD, FORMERR, its question when that alone parses, and an OPT
/// (with the DO bit) when it had one (RFC 6891 §7), as every other
/// FORMERR, NSID included when asked for.
fn form_error(
    data: &DnsData,
    request: &Metadata,
    message: &[u8],
    protocol: Protocol,
    reply: &mut Vec<u8>,
) {
    let opt = ecs::opt_size_and_do(message);
    let mut answer = answer::Reply::empty(request, opt.map(|(_, dnssec_ok)| dnssec_ok));
    answer.metadata.response_code = ResponseCode::FormErr;
    if identity::asks_nsid(message) {
        data.compiled.identity.add_nsid(&mut answer);
    }
    // The question's name may point back into the header: decode from the
    // message's start.
    let mut decoder = BinDecoder::new(message);
    let question = match Header::read(&mut decoder) {
        Ok(header) if header.counts.queries == 1 => LowerQuery::read(&mut decoder).ok(),
        _ => None,
    };
    let max = match protocol {
        Protocol::Udp => answer::udp_limit(opt.map(|(size, _)| size)),
        _ => u16::MAX,
    };
    answer::encode_within(answer, question.as_slice(), max, reply);
}

/// Panics while answering are logged at most once per this interval (per
/// UDP thread, and once for all TCP connections), with the number left
/// unlogged since the last line.
const PANIC_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// A panic message is cut to this many characters in the log.
const PANIC_MESSAGE_MAX: usize = 160;

thread_local! {
    /// Set while this thread answers a packet under `catch_unwind`.
    static ANSWERING: Cell<bool> = const { Cell::new(false) };
    /// Where and why the last panic while answering happened, as the
    /// panic hook saw it.
    static PANICKED_AT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Installs (once) a panic hook that, for a panic while a message is
/// answered under [`catching_panics`], only notes its location and message
/// for [`PanicLog`]: the default hook's output (and a backtrace with
/// `RUST_BACKTRACE`) for each packet of a flood would flood the log. Every
/// other panic goes to the hook that was there before.
pub(super) fn quiet_answer_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !ANSWERING.get() {
                return previous(info);
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let location = info
                .location()
                .map_or_else(|| "?".to_owned(), ToString::to_string);
            let short: String = message.chars().take(PANIC_MESSAGE_MAX).collect();
            PANICKED_AT.with_borrow_mut(|at| *at = format!("{location}: {short}"));
        }));
    });
}

/// `f` under `catch_unwind`, its panic (if any) kept quiet by the hook of
/// [`quiet_answer_panics`] and returned as its location and message.
pub(super) fn catching_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    ANSWERING.set(true);
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    ANSWERING.set(false);
    result.map_err(|_| PANICKED_AT.with_borrow_mut(std::mem::take))
}

/// Logs panics while answering as one short line at most per
/// [`PANIC_LOG_INTERVAL`], so that a flood of packets meeting a bug costs
/// no more log than one.
pub(super) struct PanicLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl PanicLog {
    pub(super) const fn new() -> PanicLog {
        PanicLog {
            last: None,
            suppressed: 0,
        }
    }

    pub(super) fn record(&mut self, src: SocketAddr, at: String) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < PANIC_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::error!(
            %src,
            panic = %at,
            suppressed = self.suppressed,
            "answering a DNS query panicked; dropped (suppressed: others since the last such line)"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hickory_proto::op::{Message, OpCode, Query};
    use hickory_proto::rr::{DNSClass, Name, RecordType};
    use hickory_server::server::Request;

    use super::*;
    use crate::dns::AllUp;
    use crate::dns::answer::tests::data;
    use crate::dns::cache::PacketCache;
    use crate::dns::udp::answer_packet;

    const RD: u8 = 0x01;
    const CD: u8 = 0x10;
    const DO: u8 = 0x80;

    /// A query with id 0x4242: the header's third and fourth bytes,
    /// `records` after the question (counted as additional), the question
    /// (name, type, class).
    fn query(flags: [u8; 2], question: (&str, u16, u16), records: &[Vec<u8>]) -> Vec<u8> {
        let mut m = vec![0x42, 0x42, flags[0], flags[1], 0, 1, 0, 0, 0, 0, 0];
        m.push(records.len() as u8);
        for label in question.0.trim_end_matches('.').split('.') {
            m.push(label.len() as u8);
            m.extend(label.as_bytes());
        }
        m.push(0);
        m.extend(question.1.to_be_bytes());
        m.extend(question.2.to_be_bytes());
        for record in records {
            m.extend(record);
        }
        m
    }

    /// An OPT record owned by the root: size 1232, EDNS `version`, the
    /// flags' first byte, `rdata` (the options, raw).
    fn opt(version: u8, flags: u8, rdata: &[u8]) -> Vec<u8> {
        let mut r = vec![0, 0, 41, 0x04, 0xd0, 0, version, flags, 0];
        r.extend((rdata.len() as u16).to_be_bytes());
        r.extend(rdata);
        r
    }

    /// One option, code and data, as OPT RDATA.
    fn option(code: u16, data: &[u8]) -> Vec<u8> {
        let mut o = code.to_be_bytes().to_vec();
        o.extend((data.len() as u16).to_be_bytes());
        o.extend(data);
        o
    }

    /// The replies to `packet` over UDP (the fast path when it can) and TCP.
    fn replies(packet: &[u8]) -> [Vec<u8>; 2] {
        let data = data(Arc::new(AllUp));
        let src: SocketAddr = "192.0.2.200:5353".parse().unwrap();
        let (mut udp, mut tcp) = (Vec::new(), Vec::new());
        let mut cache = PacketCache::default();
        assert!(answer_packet(&data, packet, src, &mut udp, &mut cache).is_some());
        assert!(answer(&data, packet, src, Protocol::Tcp, &mut tcp).is_some());
        [udp, tcp]
    }

    const A: u16 = 1;
    const IN: u16 = 1;

    /// RFC 3225 §3: the DO bit of the query's OPT is in the reply's,
    /// whatever the path and the rcode.
    #[test]
    fn the_do_bit_is_copied_into_every_reply_with_an_opt() {
        crate::dns::cookie::pin_now(Some(1_800_000_000));
        let ecs_bits_past_prefix = option(8, &[0, 1, 20, 0, 81, 2, 69]);
        let ecs_family_3 = option(8, &[0, 3, 8, 0, 10]);
        let ecs = option(8, &[0, 1, 24, 0, 81, 2, 69]);
        // (opcode, name, type, options, EDNS version, rcode)
        type Case<'a> = (u8, &'a str, u16, &'a [u8], u8, ResponseCode);
        let cases: [Case<'_>; 9] = [
            (0, "api.mysite.com.", A, &[], 0, ResponseCode::NoError),
            (0, "api.mysite.com.", A, &ecs, 0, ResponseCode::NoError),
            (0, "api.mysite.com.", 16, &ecs, 0, ResponseCode::NoError),
            (0, "nothing.mysite.com.", A, &[], 0, ResponseCode::NXDomain),
            (0, "example.org.", A, &[], 0, ResponseCode::Refused),
            (
                0,
                "api.mysite.com.",
                A,
                &ecs_bits_past_prefix,
                0,
                ResponseCode::FormErr,
            ),
            (
                0,
                "api.mysite.com.",
                A,
                &ecs_family_3,
                0,
                ResponseCode::FormErr,
            ),
            (0, "api.mysite.com.", A, &[], 1, ResponseCode::BADVERS),
            (3, "api.mysite.com.", A, &[], 0, ResponseCode::NotImp),
        ];
        for (opcode, name, qtype, options, version, rcode) in cases {
            for dnssec_ok in [DO, 0] {
                let records = [opt(version, dnssec_ok, options)];
                let packet = query([opcode << 3 | RD, 0], (name, qtype, IN), &records);
                for reply in replies(&packet) {
                    let case = format!("{name} {qtype} opcode {opcode} {options:?} DO {dnssec_ok}");
                    let m = Message::from_vec(&reply).unwrap();
                    // BADVERS and BADSIG share 16: compare numbers.
                    let got = u16::from(m.metadata.response_code);
                    assert_eq!(got, u16::from(rcode), "{case}");
                    let edns = m.edns.as_ref().unwrap_or_else(|| panic!("{case}"));
                    assert_eq!(edns.flags().dnssec_ok, dnssec_ok == DO, "{case}");
                }
            }
        }
    }

    /// RFC 6891 §7: a FORMERR for options hickory-proto rejects while
    /// parsing carries an OPT when the query had one, and the question
    /// when it parses, like the FORMERRs of `answer`.
    #[test]
    fn formerr_from_the_parser_keeps_the_question_and_the_opt() {
        let q = ("api.mysite.com.", A, IN);
        let mut owned_by_a = opt(0, DO, &[]);
        owned_by_a.splice(0..1, [1, b'a', 0]);
        // (query, whether it had an OPT)
        let cases = [
            (
                query([RD, CD], q, &[opt(0, DO, &option(8, &[0, 3, 8, 0, 10]))]),
                true,
            ),
            (
                query(
                    [RD, CD],
                    q,
                    &[opt(0, DO, &option(8, &[0, 1, 33, 0, 1, 2, 3, 4, 5]))],
                ),
                true,
            ),
            (
                query([RD, CD], q, &[opt(0, DO, &option(8, &[0, 2, 129, 0]))]),
                true,
            ),
            // An option running past the record.
            (
                query([RD, CD], q, &[opt(0, DO, &[0, 8, 0, 10, 0, 1])]),
                true,
            ),
            (
                query([RD, CD], q, &[opt(0, DO, &[]), opt(0, DO, &[])]),
                true,
            ),
            (query([RD, CD], q, &[owned_by_a]), true),
            // A record cut short, no OPT.
            (query([RD, CD], q, &[vec![0, 0, 1, 0, 1]]), false),
        ];
        for (packet, with_opt) in cases {
            let src: SocketAddr = "192.0.2.200:5353".parse().unwrap();
            assert!(
                Request::from_bytes(packet.clone(), src, Protocol::Udp).is_err(),
                "hickory-proto's own FORMERR: {packet:02x?}"
            );
            for reply in replies(&packet) {
                let m = Message::from_vec(&reply).unwrap();
                assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
                assert_eq!(m.metadata.id, 0x4242);
                assert!(m.metadata.recursion_desired && m.metadata.checking_disabled);
                let asked = Query::query(Name::from_ascii(q.0).unwrap(), RecordType::A);
                assert_eq!(m.queries, [asked], "{packet:02x?}");
                assert_eq!(m.edns.is_some(), with_opt, "{packet:02x?}");
                if let Some(edns) = &m.edns {
                    assert!(edns.flags().dnssec_ok);
                    assert_eq!(edns.max_payload(), answer::MAX_UDP_PAYLOAD);
                }
            }
        }
        // No question to echo: a name past 255 octets.
        let long = format!("{}.mysite.com.", vec!["a".repeat(63); 4].join("."));
        let packet = query([RD, 0], (&long, A, IN), &[opt(0, 0, &[])]);
        for reply in replies(&packet) {
            let m = Message::from_vec(&reply).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            assert!(m.queries.is_empty() && m.edns.is_some());
        }
    }

    /// NSID on a FORMERR from hickory-proto's parser (family 3) or
    /// geolb's (bits past the prefix), on BADVERS and on NOTIMP, when
    /// asked; never unasked.
    #[test]
    fn nsid_on_formerr_badvers_and_notimp_when_asked() {
        let nsid = option(3, &[]);
        let family_3 = option(8, &[0, 3, 8, 0, 10]);
        let bits_past_prefix = option(8, &[0, 1, 20, 0, 81, 2, 69]);
        // (opcode, EDNS version, other options, rcode)
        let cases = [
            (0, 0, family_3, ResponseCode::FormErr),
            (0, 0, bits_past_prefix, ResponseCode::FormErr),
            (0, 1, vec![], ResponseCode::BADVERS),
            (3, 0, vec![], ResponseCode::NotImp),
        ];
        for (opcode, version, others, rcode) in cases {
            for asked in [true, false] {
                let options = if asked {
                    [nsid.clone(), others.clone()].concat()
                } else {
                    others.clone()
                };
                let records = [opt(version, 0, &options)];
                let packet = query([opcode << 3 | RD, 0], ("api.mysite.com.", A, IN), &records);
                for reply in replies(&packet) {
                    let m = Message::from_vec(&reply).unwrap();
                    assert_eq!(u16::from(m.metadata.response_code), u16::from(rcode));
                    let got = m
                        .edns
                        .as_ref()
                        .unwrap()
                        .option(hickory_proto::rr::rdata::opt::EdnsCode::NSID)
                        .map(|o| Vec::<u8>::try_from(o).unwrap());
                    let case = format!("{rcode:?} {others:?}");
                    assert_eq!(got, asked.then(|| b"ns-test".to_vec()), "{case}");
                }
            }
        }
    }

    /// NOTIMP for an opcode not served echoes RD and CD, as every reply.
    #[test]
    fn notimp_echoes_rd_and_cd() {
        for opcode in [1u8, 2, 3, 4, 5, 6, 15] {
            for records in [vec![], vec![opt(0, 0, &[])]] {
                let packet = query([opcode << 3 | RD, CD], ("mysite.com.", 6, IN), &records);
                for reply in replies(&packet) {
                    let m = Message::from_vec(&reply).unwrap();
                    let case = format!("opcode {opcode}: {reply:02x?}");
                    assert_eq!(m.metadata.response_code, ResponseCode::NotImp, "{case}");
                    assert_eq!(m.metadata.op_code, OpCode::from_u8(opcode), "{case}");
                    assert!(m.metadata.recursion_desired, "{case}");
                    assert!(m.metadata.checking_disabled, "{case}");
                }
            }
            // No question at all (a DSO keepalive has none).
            let packet = [0x42, 0x42, opcode << 3 | RD, CD, 0, 0, 0, 0, 0, 0, 0, 0];
            for reply in replies(&packet) {
                assert_eq!(
                    reply[2..4],
                    [0x80 | opcode << 3 | RD, CD | 4],
                    "{reply:02x?}"
                );
            }
        }
    }

    /// Bytes after the last record the header counts are FORMERR, with
    /// the question and the OPT, on both paths (BIND and Knot refuse them
    /// too); a message that ends where its counts say is answered.
    #[test]
    fn bytes_after_the_last_record_are_formerr() {
        for records in [vec![], vec![opt(0, DO, &[])]] {
            let whole = query([RD, 0], ("ns1.mysite.com.", A, IN), &records);
            assert_eq!(message_end(&whole), Some(whole.len()));
            for m in replies(&whole).map(|r| Message::from_vec(&r).unwrap()) {
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            }
            for extra in [&[0u8][..], &[0xde, 0xad, 0xbe, 0xef]] {
                let mut packet = whole.clone();
                packet.extend_from_slice(extra);
                for m in replies(&packet).map(|r| Message::from_vec(&r).unwrap()) {
                    let case = format!("{records:02x?} + {extra:02x?}");
                    assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "{case}");
                    assert_eq!(m.queries.len(), 1, "{case}");
                    assert_eq!(m.edns.is_some(), !records.is_empty(), "{case}");
                }
            }
        }
        // Shorter than its counts say: no end.
        let whole = query([RD, 0], ("ns1.mysite.com.", A, IN), &[opt(0, 0, &[])]);
        assert_eq!(message_end(&whole[..whole.len() - 1]), None);
    }

    /// QCLASS ANY is answered from the IN data; other classes are
    /// refused; TYPE0 is FORMERR (RFC 6895 §3.1).
    #[test]
    fn qclass_any_takes_the_in_data_and_type_0_is_formerr() {
        let answer_of = |name, qtype, qclass| {
            let packet = query([RD, 0], (name, qtype, qclass), &[opt(0, 0, &[])]);
            replies(&packet).map(|r| Message::from_vec(&r).unwrap())
        };
        for m in answer_of("ns1.mysite.com.", A, 255) {
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.metadata.authoritative);
            assert_eq!(m.answers.len(), 1);
            assert_eq!(m.answers[0].dns_class, DNSClass::IN);
            assert_eq!(m.queries[0].query_class(), DNSClass::ANY);
        }
        for m in answer_of("api.mysite.com.", A, 255) {
            assert_eq!(m.answers.len(), 1);
        }
        for m in answer_of("nothing.mysite.com.", A, 255) {
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        }
        for qclass in [3, 4, 254] {
            for m in answer_of("ns1.mysite.com.", A, qclass) {
                assert_eq!(m.metadata.response_code, ResponseCode::Refused);
            }
        }
        for (name, qclass) in [
            ("ns1.mysite.com.", IN),
            ("example.org.", IN),
            ("mysite.com.", 255),
        ] {
            for m in answer_of(name, 0, qclass) {
                assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "{name}");
                assert!(m.answers.is_empty() && m.edns.is_some());
            }
        }
    }

    /// RFC 8914: REFUSED says why in an Extended DNS Error, when the
    /// query had an OPT to carry it.
    #[test]
    fn refused_carries_an_extended_dns_error_with_an_opt_only() {
        let not_authoritative = [0, 15, 0, 2, 0, 20];
        let prohibited = [0, 15, 0, 2, 0, 18];
        let cases: [(&str, u16, u16, &[u8]); 6] = [
            ("example.org.", A, IN, &not_authoritative),
            ("ns1.mysite.com.", A, 3, &not_authoritative),
            ("mysite.com.", 252, IN, &prohibited),
            ("mysite.com.", 251, IN, &prohibited),
            // version.bind is off by default; authors.bind is not served.
            ("version.bind.", 16, 3, &prohibited),
            ("authors.bind.", 16, 3, &not_authoritative),
        ];
        for (name, qtype, qclass, ede) in cases {
            let packet = query([RD, 0], (name, qtype, qclass), &[opt(0, 0, &[])]);
            for reply in replies(&packet) {
                assert_eq!(reply[3] & 0x0f, 5, "REFUSED: {name}");
                assert!(reply.ends_with(ede), "{name}: {reply:02x?}");
            }
            let packet = query([RD, 0], (name, qtype, qclass), &[]);
            for reply in replies(&packet) {
                assert_eq!(reply[3] & 0x0f, 5, "REFUSED: {name}");
                assert_eq!(reply[10..12], [0, 0], "no OPT: {name}");
            }
        }
        // Other answers carry none.
        let packet = query([RD, 0], ("nothing.mysite.com.", A, IN), &[opt(0, 0, &[])]);
        for reply in replies(&packet) {
            assert!(reply.ends_with(&[0, 0]), "an OPT without options");
        }
    }

    #[test]
    fn a_panic_while_answering_is_caught_quietly_with_its_place() {
        quiet_answer_panics();
        let caught = catching_panics(|| -> bool { panic!("boom {}", 42) });
        let at = caught.unwrap_err();
        assert!(
            at.contains("src/dns/wire.rs:") && at.ends_with(": boom 42"),
            "{at}"
        );
        let long = catching_panics(|| -> bool { panic!("{}", "x".repeat(5000)) });
        assert!(long.unwrap_err().len() < PANIC_MESSAGE_MAX + 100);
        assert_eq!(catching_panics(|| 7), Ok(7));
        assert!(!ANSWERING.get());
    }

    #[test]
    fn panics_are_logged_at_most_once_a_second_with_a_count() {
        let mut log = PanicLog::new();
        let src: SocketAddr = "192.0.2.1:53".parse().unwrap();
        log.record(src, "here".into());
        assert!(log.last.is_some());
        for _ in 0..5 {
            log.record(src, "here".into());
        }
        assert_eq!(log.suppressed, 5);
        log.last = Some(Instant::now() - PANIC_LOG_INTERVAL);
        log.record(src, "here".into());
        assert_eq!(log.suppressed, 0, "logged, with the 5 before");
    }
}
