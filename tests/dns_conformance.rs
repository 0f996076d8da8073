//! DNS conformance over real sockets to the real binary: CNAME loops,
//! the question's case, the additional section, compression over TCP,
//! TSIG with an unknown key; NSID, the CHAOS identity names and geo names
//! as NS, MX and SRV targets.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TSIG;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use support::{Geolb, bounded, eventually};

const WAIT: Duration = Duration::from_secs(2);
/// A records of `wide.mysite.com`: past the 120 names hickory-proto
/// compresses in one message.
const WIDE: usize = 200;

/// A zone with a CNAME loop, delegation and service names whose targets
/// are in and out of the zone, and a name with many addresses.
fn config() -> String {
    let mut many = String::new();
    for i in 1..=40 {
        many.push_str(&format!(
            "  {{ name = \"many\", type = \"AAAA\", value = \"2001:db8::{i:x}\" }},\n"
        ));
    }
    for i in 1..=WIDE {
        many.push_str(&format!(
            "  {{ name = \"Wide\", type = \"A\", value = \"10.0.{}.{}\" }},\n",
            i / 256,
            i % 256
        ));
    }
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[dns]
listen = ["127.0.0.1:0"]

[[dns.zone]]
origin = "mysite.com"
ttl = 300
soa = {{ mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }}
ns = ["ns1.mysite.com.", "ns.elsewhere.example."]
records = [
  {{ name = "ns1", type = "A", value = "192.0.2.53" }},
  {{ name = "ns1", type = "AAAA", value = "2001:db8::53" }},
  {{ name = "Loop-A", type = "CNAME", value = "loop-b.mysite.com." }},
  {{ name = "loop-b", type = "CNAME", value = "loop-a.mysite.com." }},
  {{ name = "self", type = "CNAME", value = "self.mysite.com." }},
  {{ name = "@", type = "MX", value = "10 mail.mysite.com." }},
  {{ name = "@", type = "MX", value = "20 mx.elsewhere.example." }},
  {{ name = "mail", type = "A", value = "192.0.2.25" }},
  {{ name = "_sip._tcp", type = "SRV", value = "1 2 5060 sip.mysite.com." }},
  {{ name = "sip", type = "AAAA", value = "2001:db8::5060" }},
  {{ name = "_big._tcp", type = "SRV", value = "1 2 80 many.mysite.com." }},
  {{ name = "Www", type = "A", value = "192.0.2.80" }},
{many}]

[[dns.geo]]
name = "api.mysite.com"
ttl = 30
datacenters = ["one"]

[[datacenter]]
name = "one"
location = {{ lat = 0, lon = 0 }}
addresses = ["192.0.2.1"]
always_up = true
"#
    )
}

async fn start() -> (Geolb, SocketAddr) {
    serve(&config()).await
}

/// geolb on `config`, and its DNS address.
async fn serve(config: &str) -> (Geolb, SocketAddr) {
    let geolb = Geolb::start(config).await;
    let addr = geolb.dns_addr().await;
    (geolb, addr)
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn udp(server: SocketAddr, packet: &[u8]) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("an answer over UDP")
        .unwrap();
    buf.truncate(n);
    buf
}

async fn tcp(server: SocketAddr, packet: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream
        .write_all(&(packet.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(packet).await.unwrap();
    let read = async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; len.into()];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("an answer over TCP")
}

/// The question's name exactly as it is on the wire (case kept).
fn question_name(reply: &[u8]) -> &[u8] {
    let mut at = 12;
    while reply[at] != 0 {
        at += 1 + usize::from(reply[at]);
    }
    &reply[12..=at]
}

#[tokio::test]
async fn a_cname_loop_gives_each_rrset_once() {
    let (geolb, server) = start().await;
    let reply = udp(
        server,
        &query("loop-a.mysite.com.", RecordType::A, Some(1232)),
    )
    .await;
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let owners: Vec<String> = m.answers.iter().map(|r| r.name.to_ascii()).collect();
    assert_eq!(owners.len(), 2, "each CNAME once: {owners:?}");
    assert!(
        m.answers
            .iter()
            .all(|r| r.record_type() == RecordType::CNAME)
    );

    let m = Message::from_vec(&udp(server, &query("self.mysite.com.", RecordType::A, None)).await)
        .unwrap();
    assert_eq!(m.answers.len(), 1, "a CNAME to itself once");
    drop(geolb);
}

#[tokio::test]
async fn the_querys_spelling_is_kept_in_the_question_and_its_answers() {
    let (geolb, server) = start().await;
    // 0x20 randomisation: the resolver checks the question it gets back.
    for (name, qtype) in [
        ("wWw.MySite.CoM.", RecordType::A),
        ("ApI.mysite.COM.", RecordType::A),
        ("LOOP-a.mysite.com.", RecordType::CNAME),
        ("mYsItE.com.", RecordType::MX),
    ] {
        let sent = query(name, qtype, Some(1232));
        for reply in [udp(server, &sent).await, tcp(server, &sent).await] {
            assert_eq!(question_name(&reply), question_name(&sent), "{name}");
            let m = Message::from_vec(&reply).unwrap();
            assert!(!m.answers.is_empty(), "{name}");
            for r in &m.answers {
                // The answer's owner is the question's name, compressed
                // to it, so it reads back as the question's spelling.
                assert_eq!(r.name.to_ascii(), name, "{name} {r:?}");
            }
        }
    }
    drop(geolb);
}

fn additional(m: &Message) -> Vec<(String, RecordType)> {
    m.additionals
        .iter()
        .map(|r| (r.name.to_ascii(), r.record_type()))
        .collect()
}

#[tokio::test]
async fn in_zone_targets_of_ns_mx_and_srv_come_with_their_addresses() {
    let (geolb, server) = start().await;
    let ask = |name: &'static str, qtype| async move {
        Message::from_vec(&udp(server, &query(name, qtype, Some(1232))).await).unwrap()
    };
    let m = ask("mysite.com.", RecordType::NS).await;
    assert_eq!(m.answers.len(), 2);
    assert_eq!(
        additional(&m),
        [
            ("ns1.mysite.com.".to_owned(), RecordType::A),
            ("ns1.mysite.com.".to_owned(), RecordType::AAAA)
        ],
        "ns.elsewhere.example is not ours to give"
    );
    let m = ask("mysite.com.", RecordType::MX).await;
    assert_eq!(
        additional(&m),
        [("mail.mysite.com.".to_owned(), RecordType::A)]
    );
    let m = ask("_sip._tcp.mysite.com.", RecordType::SRV).await;
    assert_eq!(
        additional(&m),
        [("sip.mysite.com.".to_owned(), RecordType::AAAA)]
    );
    assert!(
        m.additionals
            .iter()
            .any(|r| r.data == RData::AAAA("2001:db8::5060".parse().unwrap()))
    );
    // Plain answers carry none.
    let m = ask("mail.mysite.com.", RecordType::A).await;
    assert!(m.additionals.is_empty());

    // 40 AAAA (1.1 kB) do not fit 512 bytes: dropped, no TC.
    let small = udp(
        server,
        &query("_big._tcp.mysite.com.", RecordType::SRV, None),
    )
    .await;
    assert!(small.len() <= 512);
    let m = Message::from_vec(&small).unwrap();
    assert!(!m.metadata.truncation, "additional data never sets TC");
    assert_eq!(m.answers.len(), 1);
    assert!(m.additionals.is_empty());
    let big = tcp(
        server,
        &query("_big._tcp.mysite.com.", RecordType::SRV, None),
    )
    .await;
    let m = Message::from_vec(&big).unwrap();
    assert_eq!(m.additionals.len(), 40, "over TCP they fit");
    drop(geolb);
}

#[tokio::test]
async fn tcp_answers_are_compressed_as_udp_answers() {
    let (geolb, server) = start().await;
    for (name, qtype) in [
        ("mysite.com.", RecordType::MX),
        ("mysite.com.", RecordType::NS),
        ("Www.mysite.com.", RecordType::A),
        ("wWW.mysite.com.", RecordType::A),
        ("api.mysite.com.", RecordType::A),
        ("loop-b.mysite.com.", RecordType::A),
    ] {
        let sent = query(name, qtype, Some(1232));
        let over_udp = udp(server, &sent).await;
        let over_tcp = tcp(server, &sent).await;
        assert_eq!(over_tcp, over_udp, "{name} {qtype}");
        // The first answer's owner is a pointer to the question's name.
        let at = 12 + question_name(&sent).len() + 4;
        assert_eq!(over_tcp[at..at + 2], [0xc0, 12], "{name} {qtype}");
    }
    // Too big for UDP; over TCP every owner is a pointer to the question:
    // header, question, then 16 bytes a record.
    let sent = query("wide.MYSITE.com.", RecordType::A, None);
    let reply = tcp(server, &sent).await;
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.answers.len(), WIDE);
    assert_eq!(reply.len(), sent.len() + WIDE * 16, "all compressed");
    drop(geolb);
}

/// A query signed with key `key.` (HMAC-SHA256), the MAC 32 bytes of junk:
/// geolb knows no key, so the MAC is never looked at.
fn signed(name: &str) -> Vec<u8> {
    let mut packet = query(name, RecordType::A, None);
    packet[11] = 1; // ARCOUNT
    packet.extend_from_slice(b"\x03key\x00");
    packet.extend_from_slice(&250u16.to_be_bytes()); // TSIG
    packet.extend_from_slice(&255u16.to_be_bytes()); // ANY
    packet.extend_from_slice(&0u32.to_be_bytes());
    let mut rdata = b"\x0bhmac-sha256\x00".to_vec();
    rdata.extend_from_slice(&[0, 0, 0x69, 0x2a, 0x4b, 0x00]); // time signed
    rdata.extend_from_slice(&300u16.to_be_bytes()); // fudge
    rdata.extend_from_slice(&32u16.to_be_bytes());
    rdata.extend_from_slice(&[0x5a; 32]);
    rdata.extend_from_slice(&0x4242u16.to_be_bytes()); // original id
    rdata.extend_from_slice(&0u16.to_be_bytes()); // error
    rdata.extend_from_slice(&0u16.to_be_bytes()); // other len
    packet.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    packet.extend_from_slice(&rdata);
    packet
}

/// The key name and TSIG RR of a message: hickory-proto reads the TSIG RR
/// into `signature` only with its DNSSEC features, else it is an
/// additional record.
fn tsig(m: &Message) -> Option<(&Name, &TSIG)> {
    if let Some(signed) = m.signature() {
        return Some((&signed.name, &signed.data));
    }
    assert!(m.additionals.len() <= 1, "only the TSIG RR");
    m.additionals.iter().find_map(|r| match &r.data {
        RData::TSIG(tsig) => Some((&r.name, tsig)),
        _ => None,
    })
}

#[tokio::test]
async fn a_query_signed_with_an_unknown_key_gets_notauth_badkey() {
    let (geolb, server) = start().await;
    let sent = signed("api.mysite.com.");
    for reply in [udp(server, &sent).await, tcp(server, &sent).await] {
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NotAuth);
        assert!(m.answers.is_empty() && m.authorities.is_empty());
        assert_eq!(m.queries.len(), 1);
        let (key, rdata) = tsig(&m).expect("a TSIG RR in the answer");
        assert_eq!(key.to_ascii(), "key.");
        assert_eq!(u16::from(rdata.error.expect("an error")), 17, "BADKEY");
        assert!(rdata.mac.is_empty(), "no MAC: the key is unknown");
        assert_eq!(rdata.oid, 0x4242);
        assert_eq!(rdata.algorithm, TsigAlgorithm::HmacSha256);
    }
    // Unsigned, the same query is answered.
    let m = Message::from_vec(&udp(server, &query("api.mysite.com.", RecordType::A, None)).await)
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    drop(geolb);
}

// --- identity (NSID, CHAOS) and geo targets ---------------------------------

/// A zone whose NS, MX and SRV point at a geo name, with two data centers
/// a GeoIP test database tells apart; `dns_keys` go into `[dns]`, `tail`
/// after everything (a `[dns.chaos]` table).
fn identity_config(dns_keys: &str, tail: &str) -> String {
    let geoip =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/GeoIP2-City-Test.mmdb");
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[geoip]
database = "{}"

[dns]
listen = ["127.0.0.1:0"]
{dns_keys}

[[dns.zone]]
origin = "mysite.com"
soa = {{ mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }}
ns = ["ns1.mysite.com.", "geo.mysite.com."]
records = [
  {{ name = "ns1", type = "A", value = "192.0.2.53" }},
  {{ name = "@", type = "MX", value = "10 geo.mysite.com." }},
  {{ name = "_h._tcp", type = "SRV", value = "1 1 443 geo.mysite.com." }},
]

[[dns.geo]]
name = "geo.mysite.com"
datacenters = ["eu-west", "us-east"]

[[datacenter]]
name = "eu-west"
location = {{ lat = 53.35, lon = -6.26 }}
addresses = ["198.51.100.10", "2001:db8:e::10"]
always_up = true

[[datacenter]]
name = "us-east"
location = {{ lat = 39.04, lon = -77.49 }}
addresses = ["203.0.113.10", "2001:db8:a::10"]
always_up = true
{tail}
"#,
        geoip.display()
    )
}

async fn start_identity(dns_keys: &str, tail: &str) -> (Geolb, SocketAddr) {
    serve(&identity_config(dns_keys, tail)).await
}

/// A query of class `qclass` with an OPT (size 1232) carrying `options`
/// (code, raw data) in order.
fn query_with(
    name: &str,
    qtype: RecordType,
    qclass: DNSClass,
    options: &[(u16, &[u8])],
) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    let mut q = Query::query(Name::from_ascii(name).unwrap(), qtype);
    q.set_query_class(qclass);
    m.add_query(q);
    let mut e = Edns::new();
    e.set_max_payload(1232);
    for (code, data) in options {
        e.options_mut()
            .insert(EdnsOption::Unknown(*code, data.to_vec()));
    }
    m.set_edns(e);
    m.to_vec().unwrap()
}

const NSID: u16 = 3;
const ECS: u16 = 8;
const COOKIE: u16 = 10;
const EDE: u16 = 15;

/// The raw data of option `code` in a reply's OPT.
fn option_of(m: &Message, code: u16) -> Option<Vec<u8>> {
    let option = m.edns.as_ref()?.option(EdnsCode::from(code))?;
    Some(Vec::<u8>::try_from(option).unwrap())
}

/// The UDP reply and the TCP reply to `packet`, parsed.
async fn both(server: SocketAddr, packet: &[u8]) -> [Message; 2] {
    [
        Message::from_vec(&udp(server, packet).await).unwrap(),
        Message::from_vec(&tcp(server, packet).await).unwrap(),
    ]
}

/// RFC 5001: NSID goes back to queries with an NSID option, beside ECS
/// and COOKIE, whatever the rcode; never to others.
#[tokio::test]
async fn nsid_comes_back_only_when_asked_whatever_the_rcode() {
    let (geolb, server) = start_identity("nsid = \"ns-fra-1\"", "").await;
    let ecs_27 = [0, 1, 27, 0, 81, 2, 69, 160];
    let ecs_bits_past_prefix = [0, 1, 20, 0, 81, 2, 69];
    let client_cookie = [7u8; 8];
    // (name, options besides NSID, rcode, option that must come back too)
    type Case<'a> = (&'a str, Vec<(u16, &'a [u8])>, ResponseCode, Option<u16>);
    let cases: [Case<'_>; 5] = [
        (
            "geo.mysite.com.",
            vec![(ECS, &ecs_27)],
            ResponseCode::NoError,
            Some(ECS),
        ),
        (
            "ns1.mysite.com.",
            vec![(COOKIE, &client_cookie)],
            ResponseCode::NoError,
            Some(COOKIE),
        ),
        ("nothing.mysite.com.", vec![], ResponseCode::NXDomain, None),
        ("example.org.", vec![], ResponseCode::Refused, Some(EDE)),
        (
            "geo.mysite.com.",
            vec![(ECS, &ecs_bits_past_prefix)],
            ResponseCode::FormErr,
            None,
        ),
    ];
    for (name, options, rcode, beside) in cases {
        for asked in [true, false] {
            let mut all = options.clone();
            if asked {
                all.push((NSID, &[]));
            }
            let packet = query_with(name, RecordType::A, DNSClass::IN, &all);
            for m in both(server, &packet).await {
                let case = format!("{name} {options:?} asked {asked}");
                assert_eq!(m.metadata.response_code, rcode, "{case}");
                let expected = asked.then(|| b"ns-fra-1".to_vec());
                assert_eq!(option_of(&m, NSID), expected, "{case}");
                if let Some(code) = beside {
                    assert!(option_of(&m, code).is_some(), "{case}: option {code}");
                }
            }
        }
    }
    // ECS scope and cookie are as without NSID.
    let packet = query_with(
        "geo.mysite.com.",
        RecordType::A,
        DNSClass::IN,
        &[(NSID, &[]), (ECS, &ecs_27)],
    );
    for m in both(server, &packet).await {
        assert_eq!(option_of(&m, ECS).unwrap(), [0, 1, 27, 1, 81, 2, 69, 160]);
    }
    // dig +nsid sees it too.
    let port = server.port().to_string();
    let out = dig(&["+nsid", "-p", &port, "@127.0.0.1", "ns1.mysite.com", "A"]).await;
    assert!(
        out.contains("NSID: 6e 73 2d 66 72 61 2d 31 (\"ns-fra-1\")"),
        "{out}"
    );
    drop(geolb);
}

/// `dig ARGS` (tries and time bounded), its standard output.
async fn dig(args: &[&str]) -> String {
    let run = tokio::process::Command::new("dig")
        .args(["+tries=1", "+time=2"])
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = bounded(Duration::from_secs(10), "dig", run)
        .await
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The TXT text of a CHAOS reply's one answer, checked to be CH, TTL 0,
/// authoritative; None for REFUSED.
fn chaos_text(m: &Message) -> Option<String> {
    if m.metadata.response_code == ResponseCode::Refused {
        assert!(m.answers.is_empty() && !m.metadata.authoritative);
        return None;
    }
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    let [record] = &m.answers[..] else {
        panic!("one answer: {m:?}");
    };
    assert_eq!((record.dns_class, record.ttl), (DNSClass::CH, 0));
    let RData::TXT(txt) = &record.data else {
        panic!("{record:?}");
    };
    Some(txt.to_string())
}

async fn chaos(server: SocketAddr, name: &str, qtype: RecordType) -> [Option<String>; 2] {
    let packet = query_with(name, qtype, DNSClass::CH, &[]);
    both(server, &packet).await.map(|m| chaos_text(&m))
}

/// RFC 4892: id.server and hostname.bind give the host name by default,
/// version.bind nothing (REFUSED, as Knot refuses a name it gives nothing
/// for); a reload changes them; RRL limits them like any answer.
#[tokio::test]
async fn chaos_identity_names_follow_the_config_and_a_reload() {
    let (geolb, server) = start_identity("", "").await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = Some(host.trim().to_owned());
    for (name, qtype) in [
        ("id.server.", RecordType::TXT),
        ("Hostname.Bind.", RecordType::TXT),
        ("id.server.", RecordType::ANY),
    ] {
        assert_eq!(
            chaos(server, name, qtype).await,
            [host.clone(), host.clone()],
            "{name}"
        );
    }
    for (name, qtype) in [
        ("version.bind.", RecordType::TXT),
        ("version.server.", RecordType::TXT),
        ("id.server.", RecordType::A),
        ("authors.bind.", RecordType::TXT),
    ] {
        assert_eq!(
            chaos(server, name, qtype).await,
            [None, None],
            "{name} {qtype}"
        );
    }
    let port = server.port().to_string();
    let out = dig(&["-p", &port, "@127.0.0.1", "CH", "TXT", "version.bind"]).await;
    assert!(out.contains("status: REFUSED"), "{out}");
    assert!(
        out.contains("EDE: 18 (Prohibited)"),
        "refused by policy: {out}"
    );

    geolb
        .write_config(&identity_config(
            "nsid = false",
            "[dns.chaos]\nid_server = false\nhostname_bind = \"edge-7\"\nversion_bind = true",
        ))
        .unwrap();
    geolb.signal("HUP");
    let version_text = format!("geolb {}", env!("CARGO_PKG_VERSION"));
    let version = Some(version_text.clone());
    eventually(
        "version.bind is answered after the reload",
        WAIT,
        || async {
            chaos(server, "version.bind.", RecordType::TXT).await
                == [version.clone(), version.clone()]
        },
    )
    .await;
    assert_eq!(
        chaos(server, "id.server.", RecordType::TXT).await,
        [None, None]
    );
    let edge = Some("edge-7".to_owned());
    assert_eq!(
        chaos(server, "hostname.bind.", RecordType::TXT).await,
        [edge.clone(), edge]
    );
    let out = dig(&[
        "+short",
        "-p",
        &port,
        "@127.0.0.1",
        "CH",
        "TXT",
        "version.bind",
    ])
    .await;
    assert_eq!(out.trim(), format!("\"{version_text}\""));
    // NSID off: none, even asked.
    let packet = query_with(
        "ns1.mysite.com.",
        RecordType::A,
        DNSClass::IN,
        &[(NSID, &[])],
    );
    for m in both(server, &packet).await {
        assert_eq!(option_of(&m, NSID), None);
    }

    // One response a second, every limited one slipped (TC): a burst of
    // CHAOS queries over UDP is limited like any other.
    let chaos_keys = "[dns.chaos]\nversion_bind = true";
    let rrl = "[dns.rrl]\nresponses_per_second = 1\nslip = 1";
    geolb
        .write_config(&identity_config("", &format!("{chaos_keys}\n{rrl}")))
        .unwrap();
    geolb.signal("HUP");
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let packet = query_with("version.bind.", RecordType::TXT, DNSClass::CH, &[]);
    eventually("RRL slips a burst of CHAOS answers", WAIT, || async {
        let mut slipped = 0;
        for _ in 0..5 {
            socket.send_to(&packet, server).await.unwrap();
            let mut buf = vec![0u8; 2048];
            let n = bounded(WAIT, "a reply or a slip", socket.recv(&mut buf))
                .await
                .unwrap();
            let m = Message::from_vec(&buf[..n]).unwrap();
            slipped += usize::from(m.metadata.truncation && m.answers.is_empty());
        }
        slipped >= 3
    })
    .await;
    drop(geolb);
}

/// A geo name that is the target of MX, SRV and NS answers comes in the
/// additional section with this client's addresses (the same decision as
/// its own A and AAAA answers), and the reply's scope is that decision's.
#[tokio::test]
async fn geo_targets_of_mx_srv_and_ns_get_this_clients_addresses_and_scope() {
    let (geolb, server) = start_identity("", "").await;
    // (ECS option data, the addresses expected)
    let clients: [(&[u8], [&str; 2]); 2] = [
        (
            &[0, 1, 27, 0, 81, 2, 69, 160],
            ["198.51.100.10", "2001:db8:e::10"],
        ),
        (
            &[0, 1, 32, 0, 216, 160, 83, 56],
            ["203.0.113.10", "2001:db8:a::10"],
        ),
    ];
    for (name, qtype) in [
        ("mysite.com.", RecordType::MX),
        ("_h._tcp.mysite.com.", RecordType::SRV),
        ("mysite.com.", RecordType::NS),
    ] {
        for (ecs, expected) in clients {
            // The scope the geo name's own answer gets for this client
            // (widened by aggregation where neighbours agree).
            let own = query_with(
                "geo.mysite.com.",
                RecordType::A,
                DNSClass::IN,
                &[(ECS, ecs)],
            );
            let [own, _] = both(server, &own).await;
            let scope = option_of(&own, ECS).unwrap()[3];
            assert!(scope > 0, "a located client's scope is not 0");
            let packet = query_with(name, qtype, DNSClass::IN, &[(ECS, ecs)]);
            for m in both(server, &packet).await {
                let case = format!("{name} {qtype} {ecs:?}");
                let geo: Vec<String> = m
                    .additionals
                    .iter()
                    .filter(|r| r.name.to_ascii() == "geo.mysite.com.")
                    .map(|r| r.data.to_string())
                    .collect();
                assert_eq!(geo, expected, "{case}");
                let echoed = option_of(&m, ECS).unwrap();
                assert_eq!(echoed[3], scope, "{case}: scope");
                if qtype == RecordType::NS {
                    assert!(
                        additional(&m).contains(&("ns1.mysite.com.".to_owned(), RecordType::A)),
                        "{case}"
                    );
                }
            }
        }
    }
    // The geo name's own answer agrees.
    let packet = query_with(
        "geo.mysite.com.",
        RecordType::AAAA,
        DNSClass::IN,
        &[(ECS, clients[1].0)],
    );
    let m = Message::from_vec(&udp(server, &packet).await).unwrap();
    assert_eq!(m.answers[0].data.to_string(), "2001:db8:a::10");
    drop(geolb);
}
