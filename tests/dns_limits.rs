//! DNS limits over real sockets: response rate limiting over UDP (a flood
//! from one network limited while another keeps every answer), DNS
//! cookies (checked byte by byte, and exempting from RRL), and the limits
//! of DNS over TCP (idle timeout, connection cap, queries per connection).
//! Loopback has all of 127/8, so clients bind 127.0.1.x and 127.0.2.x to
//! be two client networks.

mod support;

use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use geolb::dns::{self, SharedDnsData};
use geolb::geoip::Locator;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RecordType};
use siphasher::sip::SipHasher24;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use support::{bounded, eventually};

const WAIT: Duration = Duration::from_secs(2);
const SECRET_HEX: &str = "000102030405060708090a0b0c0d0e0f";
const SECRET: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// A zone with one static name; `DNS` is replaced by the `[dns]` keys of
/// each test.
const CONFIG: &str = r#"
[dns]
listen = ["127.0.0.1:0"]
DNS

[[dns.zone]]
origin = "mysite.com"
soa = { mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }
ns = ["ns1.mysite.com."]
records = [
  { name = "ns1", type = "A", value = "192.0.2.53" },
  { name = "api", type = "A", value = "192.0.2.80" },
]
"#;

fn data(dns_keys: &str) -> dns::DnsData {
    let text = CONFIG.replace("DNS", dns_keys);
    let config = geolb::config::parse_str(&text, Path::new("/tmp/geolb-dns-limits.toml")).unwrap();
    let locator = Locator::from_config(None, None).unwrap();
    dns::compile(&config, Arc::new(locator), Arc::new(dns::AllUp)).unwrap()
}

struct Server {
    addr: SocketAddr,
    data: SharedDnsData,
    shutdown: CancellationToken,
}

impl Server {
    async fn start(dns_keys: &str) -> Server {
        support::library::metrics();
        let data: SharedDnsData = Arc::new(ArcSwap::from_pointee(data(dns_keys)));
        let sockets = dns::bind(&["127.0.0.1:0".parse().unwrap()], 1)
            .await
            .unwrap();
        let addr = sockets[0].local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(dns::serve(sockets, data.clone(), shutdown.clone()));
        Server {
            addr,
            data,
            shutdown,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A query for `name` A with EDNS and, when given, a COOKIE option.
fn query(id: u16, name: &str, cookie: Option<&[u8]>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    if let Some(cookie) = cookie {
        edns.options_mut()
            .insert(EdnsOption::Unknown(10, cookie.to_vec()));
    }
    m.set_edns(edns);
    m.to_vec().unwrap()
}

/// The COOKIE option of a reply.
fn cookie_of(m: &Message) -> Option<Vec<u8>> {
    match m.edns.as_ref()?.option(EdnsCode::Cookie)? {
        EdnsOption::Unknown(10, data) => Some(data.clone()),
        _ => None,
    }
}

/// What came back for a batch of queries from one client.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    sent: usize,
    answered: usize,
    /// Empty, with TC: RRL's slip.
    slipped: usize,
}

impl Tally {
    fn dropped(&self) -> usize {
        self.sent - self.answered - self.slipped
    }
}

/// Sends `n` queries from `socket` in chunks of 25 (so that no buffer
/// overflows on loopback) and sorts the replies; a reply not back within
/// half a second of the last query is counted dropped.
async fn send(socket: &UdpSocket, server: SocketAddr, n: usize, cookie: Option<&[u8]>) -> Tally {
    let mut tally = Tally::default();
    let mut buf = vec![0u8; 2048];
    let mut chunks = (0..n).step_by(25).peekable();
    while let Some(chunk_start) = chunks.next() {
        for id in chunk_start..(chunk_start + 25).min(n) {
            let packet = query(id as u16, "api.mysite.com.", cookie);
            socket.send_to(&packet, server).await.unwrap();
            tally.sent += 1;
        }
        // Between chunks a short wait (most replies are back in well under
        // a millisecond); late ones are read with the next chunk's.
        let wait = match chunks.peek() {
            Some(_) => Duration::from_millis(50),
            None => Duration::from_millis(500),
        };
        while tally.answered + tally.slipped < tally.sent {
            let Ok(Ok(len)) = tokio::time::timeout(wait, socket.recv(&mut buf)).await else {
                break;
            };
            let reply = Message::from_vec(&buf[..len]).unwrap();
            if reply.metadata.truncation && reply.answers.is_empty() {
                tally.slipped += 1;
            } else {
                assert_eq!(reply.answers.len(), 1, "{reply:?}");
                tally.answered += 1;
            }
        }
    }
    tally
}

async fn client(ip: &str) -> UdpSocket {
    UdpSocket::bind((ip, 0)).await.unwrap()
}

/// The flood from 127.0.1.1 beyond 20 responses a second: a burst of 20,
/// then 20 a second, the rest half dropped and half slipped (slip 2);
/// meanwhile 127.0.2.1 asking the same name gets every answer; a client of
/// the flooding network with a valid server cookie is not limited; a
/// reload to `responses_per_second = 0` turns limiting off.
#[tokio::test]
async fn rrl_limits_a_flooding_network_and_spares_others_and_cookies() {
    let server = Server::start(&format!(
        "cookie_secret = \"{SECRET_HEX}\"\n[dns.rrl]\nresponses_per_second = 20\nslip = 2"
    ))
    .await;
    let flooder = client("127.0.1.1").await;
    let other = client("127.0.2.1").await;
    let started = Instant::now();
    let (flood, spared) = tokio::join!(send(&flooder, server.addr, 400, None), async {
        let mut total = Tally::default();
        // Spread over the flood.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t = send(&other, server.addr, 1, None).await;
            total.sent += t.sent;
            total.answered += t.answered;
            total.slipped += t.slipped;
        }
        total
    });
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "in {elapsed:.2} s, flooder 127.0.1.1: {flood:?}, dropped {}; 127.0.2.1: {spared:?}",
        flood.dropped()
    );
    assert_eq!(spared.answered, spared.sent, "{spared:?}");
    // The burst, then the rate (plus one for the instant the test looked).
    assert!(flood.answered >= 20, "{flood:?}");
    assert!(
        flood.answered as f64 <= 20.0 + 20.0 * elapsed + 1.0,
        "{flood:?} in {elapsed} s"
    );
    let limited = flood.sent - flood.answered;
    assert_eq!(flood.slipped, limited / 2, "every second limited one slips");
    assert_eq!(flood.dropped(), limited - limited / 2);

    // A client of the same network learns a server cookie, then floods
    // with it: every answer, while its network is still limited.
    let member = client("127.0.1.2").await;
    let client_cookie = [9u8, 8, 7, 6, 5, 4, 3, 2];
    let mut buf = vec![0u8; 2048];
    let mut reply = None;
    // Its first query, without a server cookie yet, may itself be limited
    // (dropped or slipped): ask again.
    for _ in 0..50 {
        let packet = query(1, "api.mysite.com.", Some(&client_cookie));
        member.send_to(&packet, server.addr).await.unwrap();
        let wait = Duration::from_millis(100);
        if let Ok(Ok(len)) = tokio::time::timeout(wait, member.recv(&mut buf)).await {
            let got = Message::from_vec(&buf[..len]).unwrap();
            if !got.answers.is_empty() {
                reply = Some(got);
                break;
            }
        }
    }
    let reply = reply.expect("an answer with a server cookie");
    let cookie = cookie_of(&reply).expect("a COOKIE in the reply");
    let server_cookie = &cookie[8..];
    let with_cookie = send(&member, server.addr, 100, Some(&cookie)).await;
    eprintln!("127.0.1.2 with its server cookie: {with_cookie:?}");
    assert_eq!(with_cookie.answered, 100, "{with_cookie:?}");
    assert_eq!(server_cookie.len(), 16);
    let still = send(&client("127.0.1.3").await, server.addr, 30, None).await;
    eprintln!("127.0.1.3 without: {still:?}");
    assert!(
        still.answered < 30,
        "the network is still limited: {still:?}"
    );

    let text = support::library::metrics().render();
    let dropped = support::library::metric(
        &text,
        "geolb_dns_rrl_limited_total",
        &[("action", "dropped")],
    );
    let slipped = support::library::metric(
        &text,
        "geolb_dns_rrl_limited_total",
        &[("action", "slipped")],
    );
    assert!(dropped.unwrap() >= flood.dropped() as f64, "{text}");
    assert!(slipped.unwrap() >= flood.slipped as f64, "{text}");

    // Off after a reload: every answer to the same flooder.
    server
        .data
        .store(Arc::new(data("[dns.rrl]\nresponses_per_second = 0")));
    let off = send(&flooder, server.addr, 300, None).await;
    assert_eq!(off.answered, 300, "{off:?}");
}

/// The server cookie of a reply, byte by byte (RFC 9018): the client
/// cookie echoed, version 1, three zero octets, a timestamp of now, and
/// SipHash-2-4 under the configured secret of the client cookie, those
/// eight octets and the client's address; presented again, it is answered
/// with a fresh one. A COOKIE of a bad length is FORMERR, with an OPT.
#[tokio::test]
async fn cookies_byte_by_byte_and_malformed_formerr() {
    let server = Server::start(&format!("cookie_secret = \"{SECRET_HEX}\"")).await;
    let socket = client("127.0.3.7").await;
    let ask = |packet: Vec<u8>| {
        let socket = &socket;
        async move {
            socket.send_to(&packet, server.addr).await.unwrap();
            let mut buf = vec![0u8; 2048];
            let len = bounded(WAIT, "a reply", socket.recv(&mut buf))
                .await
                .unwrap();
            Message::from_vec(&buf[..len]).unwrap()
        }
    };
    let client_cookie = [0xc1u8, 2, 3, 4, 5, 6, 7, 8];
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let reply = ask(query(7, "api.mysite.com.", Some(&client_cookie))).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 1);
    let cookie = cookie_of(&reply).unwrap();
    assert_eq!(cookie.len(), 24);
    assert_eq!(cookie[..8], client_cookie);
    assert_eq!(cookie[8..12], [1, 0, 0, 0], "version 1, reserved");
    let timestamp = u32::from_be_bytes(cookie[12..16].try_into().unwrap());
    assert!(timestamp.abs_diff(now) <= 2, "{timestamp} vs {now}");
    let expected = |ip: IpAddr| {
        let mut h = SipHasher24::new_with_key(&SECRET);
        h.write(&client_cookie);
        h.write(&cookie[8..16]);
        match ip {
            IpAddr::V4(v4) => h.write(&v4.octets()),
            IpAddr::V6(v6) => h.write(&v6.octets()),
        }
        h.finish().to_le_bytes()
    };
    assert_eq!(cookie[16..], expected("127.0.3.7".parse().unwrap()));
    assert_ne!(cookie[16..], expected("127.0.3.8".parse().unwrap()));

    // Presented again: an answer and a server cookie as valid.
    let again = ask(query(8, "api.mysite.com.", Some(&cookie))).await;
    let renewed = cookie_of(&again).unwrap();
    assert_eq!((again.answers.len(), renewed.len()), (1, 24));
    assert_eq!(renewed[..12], cookie[..12]);

    // A wrong server cookie: answered normally, with a fresh one.
    let mut wrong = cookie.clone();
    wrong[20] ^= 0xff;
    let fixed = ask(query(9, "api.mysite.com.", Some(&wrong))).await;
    assert_eq!(fixed.answers.len(), 1);
    assert_eq!(
        cookie_of(&fixed).unwrap()[16..],
        expected("127.0.3.7".parse().unwrap())[..]
    );

    for bad in [&[1u8; 5][..], &[1; 12], &[1; 41]] {
        let reply = ask(query(10, "api.mysite.com.", Some(bad))).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::FormErr,
            "{}",
            bad.len()
        );
        assert!(reply.edns.is_some(), "FORMERR with an OPT");
        assert!(reply.answers.is_empty());
    }
}

/// One query over `stream` and its answer; Err if the connection ends.
async fn ask(stream: &mut TcpStream, id: u16) -> std::io::Result<Message> {
    let packet = query(id, "api.mysite.com.", None);
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&packet);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; len.into()];
    stream.read_exact(&mut buf).await?;
    Ok(Message::from_vec(&buf).unwrap())
}

/// TCP: an idle connection is closed after `tcp_idle_timeout`, one that
/// has had `tcp_max_queries` answers after the last; at
/// `tcp_max_connections` a new connection waits (no answer) until one
/// closes, then is served; a reload raising the cap lets one more in.
#[tokio::test]
async fn tcp_idle_timeout_query_cap_and_connection_cap() {
    let server = Server::start("tcp_idle_timeout = \"300ms\"\ntcp_max_queries = 3").await;
    // Idle: closed (end of file) soon after 300 ms, not before.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(ask(&mut idle, 1).await.unwrap().answers.len(), 1);
    let opened = Instant::now();
    let mut rest = Vec::new();
    let read = bounded(
        WAIT,
        "the idle connection closed",
        idle.read_to_end(&mut rest),
    )
    .await;
    let waited = opened.elapsed();
    assert_eq!(read.unwrap(), 0);
    assert!(waited >= Duration::from_millis(250), "{waited:?}");

    // Three answers, then the end.
    let mut capped = TcpStream::connect(server.addr).await.unwrap();
    for id in 1..=3 {
        assert_eq!(ask(&mut capped, id).await.unwrap().answers.len(), 1);
    }
    let mut rest = Vec::new();
    let read = bounded(
        WAIT,
        "closed after 3 answers",
        capped.read_to_end(&mut rest),
    )
    .await;
    assert_eq!(read.unwrap(), 0, "no fourth answer");
    drop(capped);

    // Two open (each answered, so accepted), a third held. Idle for 10 s
    // here, so that only the test closes connections.
    let server = Server::start("tcp_max_connections = 2").await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    for (stream, id) in [(&mut first, 1), (&mut second, 2)] {
        ask(stream, id).await.unwrap();
    }
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let held = tokio::time::timeout(Duration::from_millis(150), ask(&mut third, 3)).await;
    assert!(held.is_err(), "the third connection waits at the cap");
    drop(first);
    // Its query was written: the answer comes once it is accepted.
    let mut buf = [0u8; 2];
    bounded(
        WAIT,
        "the held connection served",
        third.read_exact(&mut buf),
    )
    .await
    .unwrap();
    // A reload raising the cap to 3 lets a fourth in while two are open
    // (second and third), without waiting for one to close.
    server.data.store(Arc::new(data("tcp_max_connections = 3")));
    let mut fourth = TcpStream::connect(server.addr).await.unwrap();
    let served = bounded(
        WAIT,
        "the fourth served after the reload",
        ask(&mut fourth, 4),
    )
    .await;
    assert_eq!(served.unwrap().answers.len(), 1);
    eventually("the limit counted", WAIT, || async {
        let text = support::library::metrics().render();
        support::library::metric(&text, "geolb_dns_tcp_connections_limited_total", &[])
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    let text = support::library::metrics().render();
    let closed = |reason| {
        support::library::metric(&text, "geolb_dns_tcp_closed_total", &[("reason", reason)])
    };
    assert!(closed("idle").is_some_and(|n| n >= 1.0), "{text}");
    assert!(closed("max_queries").is_some_and(|n| n >= 1.0), "{text}");
}
