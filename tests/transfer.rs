//! Zone transfers over real sockets to the real binary: AXFR and IXFR
//! with a hand-made client (its own TSIG signer, so geolb's is checked
//! against a second implementation), the ACL, TSIG errors, IXFR after a
//! reload; then Knot DNS as a real secondary pulling from geolb and
//! following a NOTIFY. Without `knotd` the Knot test says SKIPPED, unless
//! GEOLB_REQUIRE_KNOT is set (CI).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ring::hmac;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use support::{Geolb, eventually, metric_value};

const WAIT: Duration = Duration::from_secs(5);
const KEY_NAME: &str = "xfr-key.";
/// 32 bytes, base64.
const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ=";
/// Enough TXT records for several messages of 16 KiB.
const BULK: usize = 600;

fn secret() -> Vec<u8> {
    data_encoding::BASE64.decode(SECRET.as_bytes()).unwrap()
}

/// mysite.com, transferable from loopback with the key; open.test,
/// transferable unsigned from loopback; closed.test, from elsewhere only.
fn config(serial: u32, www: &str, notify: Option<SocketAddr>) -> String {
    let mut bulk = String::new();
    for i in 0..BULK {
        bulk.push_str(&format!(
            "  {{ name = \"t{i}\", type = \"TXT\", value = \"{}\" }},\n",
            "x".repeat(40)
        ));
    }
    let notify = notify.map_or(String::new(), |a| format!("notify = [\"{a}\"]"));
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[dns]
listen = ["127.0.0.1:0"]

[[dns.tsig]]
name = "{KEY_NAME}"
algorithm = "hmac-sha256"
secret = "{SECRET}"

[[dns.zone]]
origin = "mysite.com"
ttl = 300
soa = {{ mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = {serial}, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }}
ns = ["ns1.mysite.com."]
transfer = {{ allow = ["127.0.0.0/8"], key = "{KEY_NAME}" }}
{notify}
records = [
  {{ name = "ns1", type = "A", value = "192.0.2.53" }},
  {{ name = "www", type = "A", value = "{www}" }},
  {{ name = "*.cdn", type = "A", value = "192.0.2.80" }},
{bulk}]

[[dns.zone]]
origin = "open.test"
soa = {{ mname = "ns1.open.test.", rname = "hostmaster.open.test.", serial = 5, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }}
ns = ["ns1.open.test."]
transfer = {{ allow = ["127.0.0.1/32"] }}

[[dns.zone]]
origin = "closed.test"
soa = {{ mname = "ns1.closed.test.", rname = "hostmaster.closed.test.", serial = 5, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }}
ns = ["ns1.closed.test."]
transfer = {{ allow = ["192.0.2.0/24"] }}

[[dns.geo]]
name = "api.mysite.com"
ttl = 30
datacenters = ["far", "near", "third"]
answers = 2

[[datacenter]]
name = "near"
location = {{ lat = 50, lon = 8 }}
addresses = ["198.51.100.10"]
always_up = true

[[datacenter]]
name = "far"
location = {{ lat = -33, lon = 151 }}
addresses = ["203.0.113.10", "2001:db8::10"]
always_up = true

[[datacenter]]
name = "third"
location = {{ lat = 40, lon = -74 }}
addresses = ["192.0.2.10"]
always_up = true
"#
    )
}

async fn start(config: &str) -> (Geolb, SocketAddr) {
    let geolb = Geolb::start(config).await;
    let addr = geolb.dns_addr().await;
    (geolb, addr)
}

fn query(name: &str, qtype: RecordType, id: u16) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

/// An IXFR for `zone` from `serial` (RFC 1995 §3: the client's SOA in
/// the authority section).
fn ixfr(zone: &str, serial: u32) -> Message {
    let mut m = query(zone, RecordType::IXFR, 0x1f1f);
    let name = Name::from_ascii(zone).unwrap();
    let soa = SOA::new(name.clone(), name.clone(), serial, 1, 1, 1, 1);
    m.authorities
        .push(Record::from_rdata(name, 0, RData::SOA(soa)));
    m
}

// --- a TSIG signer and verifier of the test's own ---------------------

fn hmac_key() -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &secret())
}

fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.to_ascii_lowercase().as_bytes());
    }
    out.push(0);
    out
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `message` signed with `key` (RFC 8945 §4.3) at `time`; and its MAC.
fn sign(mut message: Vec<u8>, key: &hmac::Key, key_name: &str, time: u64) -> (Vec<u8>, Vec<u8>) {
    let mut covered = message.clone();
    covered.extend(wire_name(key_name));
    covered.extend_from_slice(&255u16.to_be_bytes());
    covered.extend_from_slice(&0u32.to_be_bytes());
    covered.extend(wire_name("hmac-sha256."));
    covered.extend_from_slice(&time.to_be_bytes()[2..]);
    covered.extend_from_slice(&300u16.to_be_bytes());
    covered.extend_from_slice(&[0, 0, 0, 0]);
    let mac = hmac::sign(key, &covered).as_ref().to_vec();
    let id = [message[0], message[1]];
    message[11] += 1;
    message.extend(wire_name(key_name));
    message.extend_from_slice(&250u16.to_be_bytes());
    message.extend_from_slice(&255u16.to_be_bytes());
    message.extend_from_slice(&0u32.to_be_bytes());
    let mut rdata = wire_name("hmac-sha256.");
    rdata.extend_from_slice(&time.to_be_bytes()[2..]);
    rdata.extend_from_slice(&300u16.to_be_bytes());
    rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    rdata.extend_from_slice(&mac);
    rdata.extend_from_slice(&id);
    rdata.extend_from_slice(&[0, 0, 0, 0]);
    message.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    message.extend(rdata);
    (message, mac)
}

/// Where the last record of `message` starts.
fn last_record(message: &[u8]) -> usize {
    let count = |at: usize| u16::from_be_bytes([message[at], message[at + 1]]) as usize;
    let skip = |mut at: usize| loop {
        let len = message[at];
        if len == 0 {
            return at + 1;
        }
        if len & 0xc0 == 0xc0 {
            return at + 2;
        }
        at += 1 + len as usize;
    };
    let mut at = 12;
    for _ in 0..count(4) {
        at = skip(at) + 4;
    }
    let mut last = at;
    for _ in 0..count(6) + count(8) + count(10) {
        last = at;
        at = skip(at);
        at += 10 + count(at + 8);
    }
    assert_eq!(at, message.len());
    last
}

/// The TSIG fields of a signed message: (error, time, MAC, other data).
fn tsig_fields(message: &[u8]) -> (u16, u64, Vec<u8>, Vec<u8>) {
    let start = last_record(message);
    let mut at = start + wire_name(KEY_NAME).len();
    assert_eq!(
        &message[at..at + 2],
        &250u16.to_be_bytes(),
        "a TSIG RR last"
    );
    at += 10 + wire_name("hmac-sha256.").len();
    let mut time = [0u8; 8];
    time[2..].copy_from_slice(&message[at..at + 6]);
    at += 8;
    let mac_len = u16::from_be_bytes([message[at], message[at + 1]]) as usize;
    let mac = message[at + 2..at + 2 + mac_len].to_vec();
    at += 2 + mac_len + 2;
    let error = u16::from_be_bytes([message[at], message[at + 1]]);
    let other_len = u16::from_be_bytes([message[at + 2], message[at + 3]]) as usize;
    let other = message[at + 4..at + 4 + other_len].to_vec();
    (error, u64::from_be_bytes(time), mac, other)
}

/// Checks the MAC of an answer (`first`: to the request of MAC `prior`,
/// else a later message after one of MAC `prior`); returns its MAC.
fn verify(message: &[u8], prior: &[u8], first: bool) -> Vec<u8> {
    let start = last_record(message);
    let (error, time, mac, other) = tsig_fields(message);
    let mut unsigned = message[..start].to_vec();
    unsigned[11] -= 1;
    let mut covered = (prior.len() as u16).to_be_bytes().to_vec();
    covered.extend_from_slice(prior);
    covered.extend(unsigned);
    if first {
        covered.extend(wire_name(KEY_NAME));
        covered.extend_from_slice(&255u16.to_be_bytes());
        covered.extend_from_slice(&0u32.to_be_bytes());
        covered.extend(wire_name("hmac-sha256."));
    }
    covered.extend_from_slice(&time.to_be_bytes()[2..]);
    covered.extend_from_slice(&300u16.to_be_bytes());
    if first {
        covered.extend_from_slice(&error.to_be_bytes());
        covered.extend_from_slice(&(other.len() as u16).to_be_bytes());
        covered.extend_from_slice(&other);
    }
    hmac::verify(&hmac_key(), &covered, &mac).expect("geolb's MAC verifies");
    mac
}

// --- transport ---------------------------------------------------------

async fn send(stream: &mut TcpStream, message: &[u8]) {
    stream
        .write_all(&(message.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(message).await.unwrap();
}

async fn receive(stream: &mut TcpStream) -> Vec<u8> {
    let read = async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; len.into()];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    };
    tokio::time::timeout(WAIT, read).await.expect("an answer")
}

/// Every message of a transfer: until the answers hold the SOA twice
/// (three times more for an IXFR with changes, as the first says), or
/// one SOA alone, or an error.
async fn transfer(server: SocketAddr, request: &[u8]) -> Vec<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    send(&mut stream, request).await;
    let mut messages = Vec::new();
    let mut soas = 0;
    let mut records = 0;
    loop {
        let bytes = receive(&mut stream).await;
        let m = Message::from_vec(&bytes).unwrap();
        let error = m.metadata.response_code != ResponseCode::NoError;
        records += m.answers.len();
        soas += m
            .answers
            .iter()
            .filter(|r| r.record_type() == RecordType::SOA)
            .count();
        messages.push(bytes);
        let current = first_serial(&messages);
        let last_is_current = m.answers.last().is_some_and(|r| serial(r) == current);
        let done = error
            || (records == 1 && soas == 1)
            || (soas >= 2 && last_is_current && records > 1 && soas % 2 == 0);
        if done {
            return messages;
        }
    }
}

fn serial(r: &Record) -> Option<u32> {
    match &r.data {
        RData::SOA(s) => Some(s.serial),
        _ => None,
    }
}

fn first_serial(messages: &[Vec<u8>]) -> Option<u32> {
    let m = Message::from_vec(&messages[0]).ok()?;
    m.answers.first().and_then(serial)
}

fn answers(messages: &[Vec<u8>]) -> Vec<Record> {
    messages
        .iter()
        .flat_map(|b| Message::from_vec(b).unwrap().answers)
        .collect()
}

fn ede(m: &Message) -> Option<u16> {
    m.edns
        .as_ref()?
        .options()
        .as_ref()
        .iter()
        .find_map(|(code, opt)| {
            (u16::from(*code) == 15).then(|| match opt {
                hickory_proto::rr::rdata::opt::EdnsOption::Unknown(_, data) => {
                    u16::from_be_bytes([data[0], data[1]])
                }
                _ => 0,
            })
        })
}

#[tokio::test]
async fn a_signed_axfr_sends_the_whole_zone_in_signed_messages() {
    let (geolb, server) = start(&config(1, "192.0.2.80", None)).await;
    let request = query("mysite.com.", RecordType::AXFR, 0x7777)
        .to_vec()
        .unwrap();
    let (request, mac) = sign(request, &hmac_key(), KEY_NAME, now());
    let messages = transfer(server, &request).await;
    assert!(messages.len() > 1, "{} messages", messages.len());
    let mut prior = mac;
    for (i, m) in messages.iter().enumerate() {
        assert!(m.len() <= 16 * 1024 + 200, "message {i}: {} bytes", m.len());
        prior = verify(m, &prior, i == 0);
    }
    let records = answers(&messages);
    assert_eq!(records.first().and_then(serial), Some(1));
    assert_eq!(records.last().and_then(serial), Some(1));
    // SOA, NS, ns1, www, *.cdn, the TXTs, and the geo name's 3 addresses.
    assert_eq!(records.len(), 2 + 1 + 3 + BULK + 3, "{records:?}");
    let api: Vec<String> = records
        .iter()
        .filter(|r| r.name.to_ascii() == "api.mysite.com.")
        .map(|r| r.data.to_string())
        .collect();
    // The configured order's first two data centers, health aside.
    let mut expected = ["203.0.113.10", "2001:db8::10", "198.51.100.10"];
    let mut api_sorted = api.clone();
    api_sorted.sort();
    expected.sort();
    assert_eq!(api_sorted, expected);
    assert!(
        records
            .iter()
            .any(|r| r.name.to_ascii() == "*.cdn.mysite.com.")
    );
    let metrics = geolb.metrics().await;
    let series = r#"geolb_dns_transfers_total{zone="mysite.com.",kind="axfr",result="full"}"#;
    assert_eq!(metric_value(&metrics, series), Some(1.0), "{metrics}");
    drop(geolb);
}

#[tokio::test]
async fn transfers_outside_the_acl_or_without_the_key_are_refused() {
    let (geolb, server) = start(&config(1, "192.0.2.80", None)).await;
    let refused = |bytes: &[u8]| {
        let m = Message::from_vec(bytes).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(m.answers.is_empty());
        m
    };
    // Without the zone's key.
    let mut unsigned = query("mysite.com.", RecordType::AXFR, 1);
    unsigned.set_edns(hickory_proto::op::Edns::new());
    let messages = transfer(server, &unsigned.to_vec().unwrap()).await;
    assert_eq!(ede(&refused(&messages[0])), Some(18), "EDE 18: prohibited");
    // From outside the allow list.
    let closed = query("closed.test.", RecordType::AXFR, 2).to_vec().unwrap();
    refused(&transfer(server, &closed).await[0]);
    // An IXFR is held to the same rules.
    refused(&transfer(server, &ixfr("closed.test.", 1).to_vec().unwrap()).await[0]);
    // Without a key the open zone transfers.
    let open = query("open.test.", RecordType::AXFR, 3).to_vec().unwrap();
    let records = answers(&transfer(server, &open).await);
    assert_eq!(records.len(), 3, "SOA, NS, SOA: {records:?}");
    // Over UDP, never: REFUSED (as Knot and NSD answer).
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&open, server).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    refused(&buf[..n]);

    let metrics = geolb.metrics().await;
    let count = |zone: &str, kind: &str| {
        let series =
            format!(r#"geolb_dns_transfers_total{{zone="{zone}",kind="{kind}",result="refused"}}"#);
        metric_value(&metrics, &series)
    };
    assert_eq!(count("mysite.com.", "axfr"), Some(1.0), "{metrics}");
    assert_eq!(count("closed.test.", "axfr"), Some(1.0));
    assert_eq!(count("closed.test.", "ixfr"), Some(1.0));
    let log = geolb.log();
    assert_eq!(
        log.matches("zone transfer refused").count(),
        1,
        "once per client: {log}"
    );
    drop(geolb);
}

#[tokio::test]
async fn tsig_errors_are_answered_as_rfc_8945_says() {
    let (geolb, server) = start(&config(1, "192.0.2.80", None)).await;
    let plain = query("www.mysite.com.", RecordType::A, 9).to_vec().unwrap();
    let ask = |bytes: Vec<u8>| async move {
        let mut stream = TcpStream::connect(server).await.unwrap();
        send(&mut stream, &bytes).await;
        receive(&mut stream).await
    };

    // A valid signature: answered, and signed.
    let (signed, mac) = sign(plain.clone(), &hmac_key(), KEY_NAME, now());
    let reply = ask(signed).await;
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    verify(&reply, &mac, true);

    // A wrong MAC: NOTAUTH, BADSIG, unsigned.
    let wrong = hmac::Key::new(hmac::HMAC_SHA256, b"another secret entirely");
    let (bad, _) = sign(plain.clone(), &wrong, KEY_NAME, now());
    let reply = ask(bad).await;
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NotAuth);
    let (error, _, mac_sent, _) = tsig_fields(&reply);
    assert_eq!((error, mac_sent.len()), (16, 0), "BADSIG without a MAC");

    // Out of the fudge: NOTAUTH, BADTIME, signed, our time in other data.
    let (stale, mac) = sign(plain.clone(), &hmac_key(), KEY_NAME, now() - 1000);
    let reply = ask(stale).await;
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NotAuth);
    let (error, _, _, other) = tsig_fields(&reply);
    assert_eq!(error, 18, "BADTIME");
    assert_eq!(other.len(), 6);
    let mut theirs = [0u8; 8];
    theirs[2..].copy_from_slice(&other);
    assert!(u64::from_be_bytes(theirs).abs_diff(now()) < 60);
    verify(&reply, &mac, true);

    // A key geolb does not have: NOTAUTH, BADKEY.
    let (unknown, _) = sign(plain.clone(), &hmac_key(), "other-key.", now());
    let reply = ask(unknown).await;
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NotAuth);

    // A TSIG RR that is not the last record: FORMERR (RFC 8945 §5.1).
    let (signed, _) = sign(plain.clone(), &hmac_key(), KEY_NAME, now());
    let mut misplaced = signed;
    misplaced[11] += 1;
    misplaced.extend_from_slice(b"\x00\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01");
    let m = Message::from_vec(&ask(misplaced).await).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    let metrics = geolb.metrics().await;
    let notauth = r#"geolb_dns_queries_total{qtype="A",rcode="NOTAUTH"}"#;
    assert_eq!(metric_value(&metrics, notauth), Some(3.0), "{metrics}");
    // hickory-proto (with the DNSSEC features geolb signs with) refuses a
    // message whose TSIG is not last while parsing it: counted as malformed.
    let formerr = r#"geolb_dns_queries_total{qtype="malformed",rcode="FORMERR"}"#;
    assert_eq!(metric_value(&metrics, formerr), Some(1.0), "{metrics}");
    drop(geolb);
}

#[tokio::test]
async fn ixfr_after_a_reload_sends_the_difference() {
    let (geolb, server) = start(&config(1, "192.0.2.80", None)).await;
    let signed_ixfr = |serial| {
        sign(
            ixfr("mysite.com.", serial).to_vec().unwrap(),
            &hmac_key(),
            KEY_NAME,
            now(),
        )
    };
    let (request, _) = signed_ixfr(1);
    let records = answers(&transfer(server, &request).await);
    assert_eq!(records.len(), 1, "up to date: the SOA alone");

    geolb.write_config(&config(2, "192.0.2.81", None)).unwrap();
    let (code, _, body) = support::request(geolb.admin, "POST", "/reload", &[], Default::default())
        .await
        .unwrap();
    assert_eq!(code, 200, "{body:?}");

    let (request, mac) = signed_ixfr(1);
    let messages = transfer(server, &request).await;
    let mut prior = mac;
    for (i, m) in messages.iter().enumerate() {
        prior = verify(m, &prior, i == 0);
    }
    let shown: Vec<String> = answers(&messages)
        .iter()
        .map(|r| match serial(r) {
            Some(s) => format!("SOA {s}"),
            None => format!("{} {}", r.name, r.data),
        })
        .collect();
    assert_eq!(
        shown,
        [
            "SOA 2",
            "SOA 1",
            "www.mysite.com. 192.0.2.80",
            "SOA 2",
            "www.mysite.com. 192.0.2.81",
            "SOA 2"
        ]
    );
    // A serial geolb does not keep: the whole zone.
    let (request, _) = signed_ixfr(0);
    let records = answers(&transfer(server, &request).await);
    assert_eq!(records.len(), 2 + 1 + 3 + BULK + 3);

    // The same serial with other records: refused, naming the serial.
    geolb.write_config(&config(2, "192.0.2.82", None)).unwrap();
    let (code, _, body) = support::request(geolb.admin, "POST", "/reload", &[], Default::default())
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert_ne!(code, 200, "{body}");
    assert!(body.contains("dns.zone[0].soa.serial"), "{body}");
    assert!(body.contains("raise"), "{body}");

    let metrics = geolb.metrics().await;
    let series = |result: &str| {
        format!(r#"geolb_dns_transfers_total{{zone="mysite.com.",kind="ixfr",result="{result}"}}"#)
    };
    assert_eq!(metric_value(&metrics, &series("incremental")), Some(1.0));
    assert_eq!(metric_value(&metrics, &series("up_to_date")), Some(1.0));
    assert_eq!(metric_value(&metrics, &series("full")), Some(1.0));
    drop(geolb);
}

#[test]
fn a_secret_file_that_is_not_base64_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.b64");
    std::fs::write(&file, "not base64!\n").unwrap();
    let config = format!(
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[[dns.tsig]]\nname = \"k\"\nsecret_file = {:?}\n",
        file.display().to_string()
    );
    let (ok, out, err) = support::geolb_check(&config);
    assert!(!ok);
    let text = out + &err;
    assert!(
        text.contains("line 6: dns.tsig[0].secret_file") && text.contains("base64"),
        "{text}"
    );
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let (ok, out, err) = support::geolb_check(&config);
    assert!(ok, "{out}{err}");
}

// --- Knot DNS as a secondary ---------------------------------------------

fn knotd() -> Option<&'static str> {
    const PATH: &str = "/usr/sbin/knotd";
    if std::path::Path::new(PATH).exists() {
        return Some(PATH);
    }
    assert!(
        std::env::var_os("GEOLB_REQUIRE_KNOT").is_none(),
        "GEOLB_REQUIRE_KNOT is set but knotd is not installed (apt-get install knot)"
    );
    eprintln!("SKIPPED: knotd is not installed (Debian: apt-get install knot)");
    None
}

/// Knot, stopped by its PID when dropped.
struct Knot {
    child: std::process::Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Knot {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knot.log")).unwrap_or_default()
    }

    /// Whether Knot bound its port: it logs its control socket once its
    /// listening sockets are bound, and exits when one cannot be (the port
    /// was free a moment before it started, and may have been taken since).
    async fn bound(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.log().contains("control, binding") {
                return true;
            }
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Knot neither bound its port nor exited within 10 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn start_knot(knotd: &str, port: u16, primary: SocketAddr) -> Knot {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    // Knot drops to `user` when started as root; the test's own user
    // owns the directory, so it runs as that user.
    let user = if nix_uid() == 0 {
        "user: root:root\n    "
    } else {
        ""
    };
    let conf = format!(
        r#"server:
    {user}rundir: "{dir}"
    listen: 127.0.0.1@{port}
    background-workers: 1
    tcp-workers: 1
    udp-workers: 1

log:
  - target: "{dir}/knot.log"
    any: debug

database:
    storage: "{dir}"

key:
  - id: {KEY_NAME}
    algorithm: hmac-sha256
    secret: {SECRET}

remote:
  - id: geolb
    address: {ip}@{primary_port}
    key: {KEY_NAME}

acl:
  - id: from-geolb
    address: 127.0.0.0/8
    key: {KEY_NAME}
    action: notify

template:
  - id: default
    storage: "{dir}"

zone:
  - domain: mysite.com
    master: geolb
    acl: from-geolb
    file: "{dir}/mysite.com.zone"
    zonefile-sync: -1
    journal-content: changes
"#,
        dir = path.display(),
        ip = primary.ip(),
        primary_port = primary.port(),
    );
    let file = path.join("knot.conf");
    std::fs::write(&file, conf).unwrap();
    let child = std::process::Command::new(knotd)
        .arg("-c")
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(path.join("stderr.log")).unwrap())
        .spawn()
        .expect("start knotd");
    Knot {
        child,
        dir,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

fn nix_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// What Knot answers for `name` `qtype` over UDP (None: no answer yet).
async fn ask_knot(knot: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let bytes = query(name, qtype, fastrand_id()).to_vec().ok()?;
    socket.send_to(&bytes, knot).await.ok()?;
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Message::from_vec(&buf[..n]).ok()
}

fn fastrand_id() -> u16 {
    (now() as u16).wrapping_mul(31)
}

async fn knot_serial(knot: SocketAddr) -> Option<u32> {
    let m = ask_knot(knot, "mysite.com.", RecordType::SOA).await?;
    if m.metadata.response_code != ResponseCode::NoError || !m.metadata.authoritative {
        return None;
    }
    m.answers.first().and_then(serial)
}

/// Whether Knot serves `serial` within 20 s.
async fn wait_for_serial(knot: SocketAddr, serial: u32) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if knot_serial(knot).await == Some(serial) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn knot_as_a_secondary_transfers_the_zone_and_follows_notify() {
    let Some(knotd) = knotd() else { return };
    // Knot needs a fixed port, and geolb needs it before Knot starts (to
    // send it NOTIFY): a port taken in between makes Knot exit, and both
    // start again on another.
    let mut tries = 0;
    let (geolb, knot, knot_addr) = loop {
        let knot_port = support::port_for_a_program();
        let knot_addr = SocketAddr::from(([127, 0, 0, 1], knot_port));
        let (geolb, server) = start(&config(1, "192.0.2.80", Some(knot_addr))).await;
        let mut knot = start_knot(knotd, knot_port, server);
        if knot.bound().await {
            break (geolb, knot, knot_addr);
        }
        tries += 1;
        assert!(
            tries < 5,
            "Knot could not bind a free port:\n{}",
            knot.log()
        );
    };

    let explain = |knot: &Knot| format!("knot log:\n{}\ngeolb log:\n{}", knot.log(), geolb.log());
    if !wait_for_serial(knot.addr, 1).await {
        panic!("Knot did not load serial 1 from geolb: {}", explain(&knot));
    }
    // The data as geolb serves it, geo name included.
    let m = ask_knot(knot.addr, "www.mysite.com.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(m.answers[0].data.to_string(), "192.0.2.80");
    let m = ask_knot(knot.addr, "api.mysite.com.", RecordType::A)
        .await
        .unwrap();
    let mut api: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    api.sort();
    assert_eq!(api, ["198.51.100.10", "203.0.113.10"]);
    let m = ask_knot(knot.addr, "t7.mysite.com.", RecordType::TXT)
        .await
        .unwrap();
    assert_eq!(m.answers.len(), 1);

    // A new serial: geolb sends NOTIFY, Knot asks for IXFR.
    geolb
        .write_config(&config(2, "192.0.2.81", Some(knot_addr)))
        .unwrap();
    let (code, _, body) = support::request(geolb.admin, "POST", "/reload", &[], Default::default())
        .await
        .unwrap();
    assert_eq!(code, 200, "{body:?}");
    if !wait_for_serial(knot.addr, 2).await {
        panic!(
            "Knot did not follow the NOTIFY to serial 2: {}",
            explain(&knot)
        );
    }
    let m = ask_knot(knot.addr, "www.mysite.com.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(m.answers[0].data.to_string(), "192.0.2.81");
    eventually("the IXFR and NOTIFYs counted", WAIT, || async {
        let metrics = geolb.metrics().await;
        let ixfr =
            r#"geolb_dns_transfers_total{zone="mysite.com.",kind="ixfr",result="incremental"}"#;
        let notified = r#"geolb_dns_notify_sent_total{zone="mysite.com.",result="answered"}"#;
        metric_value(&metrics, ixfr) >= Some(1.0) && metric_value(&metrics, notified) == Some(2.0)
    })
    .await;
    if std::env::var_os("SHOW_KNOT_LOG").is_some() {
        eprintln!("{}", explain(&knot));
    }
    drop(knot);
    drop(geolb);
}
