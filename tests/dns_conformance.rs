//! DNS conformance over real sockets to the real binary: CNAME loops,
//! the question's case, the additional section, compression over TCP and
//! TSIG with an unknown key.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TSIG;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use support::Geolb;

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
    let geolb = Geolb::start(&config()).await;
    let addr = geolb.status().await["dns"]["udp"][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
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
