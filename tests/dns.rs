//! The DNS server over real sockets: started in-process on 127.0.0.1:0 and
//! queried with UDP and TCP packets built with hickory-proto.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use geolb::config::Config;
use geolb::dns::{self, DatacenterHealth, SharedDnsData};
use geolb::geoip::Locator;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use support::eventually;

const WAIT: Duration = Duration::from_secs(2);

/// The contract's zone and data centers, plus names the tests need.
const CONFIG: &str = r#"
[geoip]
database = "GEOIP"

[dns]
listen = ["127.0.0.1:0"]

[[dns.zone]]
origin = "mysite.com"
ttl = 300
soa = { mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 2026112701, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }
ns = ["ns1.mysite.com.", "ns2.mysite.com."]
records = [
  { name = "ns1", type = "A", value = "192.0.2.53" },
  { name = "ns2", type = "AAAA", value = "2001:db8::53" },
  { name = "www", type = "CNAME", value = "api.mysite.com." },
  { name = "@", type = "MX", value = "10 mail.mysite.com." },
  { name = "@", type = "TXT", value = "v=spf1 -all" },
  { name = "host.lab", type = "A", value = "192.0.2.80" },
  { name = "big", type = "TXT", value = "BIG" },
  { name = "edge", type = "TXT", value = "EDGE" },
]

[[dns.geo]]
name = "api.mysite.com"
ttl = 30
datacenters = ["us-east", "eu-west", "ap-southeast"]
answers = 1

[[datacenter]]
name = "eu-west"
location = { lat = 53.35, lon = -6.26 }
addresses = ["198.51.100.10", "2001:db8:e::10"]
always_up = true
drain = DRAIN

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

fn geoip_db() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/GeoIP2-City-Test.mmdb")
}

fn config(drain_eu: bool) -> Config {
    let text = CONFIG
        .replace("GEOIP", &geoip_db().display().to_string())
        .replace("BIG", &"x".repeat(1000))
        .replace("EDGE", &"e".repeat(480))
        .replace("DRAIN", &drain_eu.to_string());
    geolb::config::parse_str(&text, Path::new("/tmp/geolb-dns-test.toml")).unwrap()
}

fn compile(config: &Config, health: Arc<dyn DatacenterHealth>) -> dns::DnsData {
    let locator = Locator::from_config(config.geoip.as_ref(), None).unwrap();
    dns::compile(config, Arc::new(locator), health).unwrap()
}

struct Running {
    addr: SocketAddr,
    data: SharedDnsData,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(health: Arc<dyn DatacenterHealth>) -> Running {
    let config = config(false);
    let data: SharedDnsData = Arc::new(ArcSwap::from_pointee(compile(&config, health)));
    let sockets = dns::bind(&config.dns.as_ref().unwrap().listen, 1)
        .await
        .unwrap();
    let addr = sockets[0].udp[0].local_addr().unwrap();
    assert_eq!(
        sockets[0].tcp.local_addr().unwrap(),
        addr,
        "TCP on UDP's port"
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(dns::serve(sockets, data.clone(), shutdown.clone()));
    Running {
        addr,
        data,
        shutdown,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the server stops promptly")
            .unwrap()
            .unwrap();
    }
}

struct Q {
    name: &'static str,
    qtype: RecordType,
    edns: Option<u16>,
    /// Raw Client Subnet option data, sent as is.
    ecs: Option<Vec<u8>>,
}

fn q(name: &'static str, qtype: RecordType) -> Q {
    Q {
        name,
        qtype,
        edns: Some(1232),
        ecs: None,
    }
}

/// Client Subnet option data: family, source prefix, scope, address octets.
fn ecs_raw(family: u16, source: u8, address: &[u8]) -> Vec<u8> {
    let mut data = family.to_be_bytes().to_vec();
    data.extend([source, 0]);
    data.extend(address);
    data
}

fn ecs(addr: &str, source: u8) -> Vec<u8> {
    let subnet = ClientSubnet::new(addr.parse().unwrap(), source, 0);
    Vec::<u8>::try_from(&subnet).unwrap()
}

impl Q {
    fn ecs(mut self, addr: &str, source: u8) -> Q {
        self.ecs = Some(ecs(addr, source));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(self.name).unwrap(),
            self.qtype,
        ));
        if let Some(size) = self.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(size);
            if let Some(data) = &self.ecs {
                edns.options_mut()
                    .insert(EdnsOption::Unknown(8, data.clone()));
            }
            m.set_edns(edns);
        }
        m.to_vec().unwrap()
    }
}

async fn udp_raw(server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(WAIT, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn udp(server: SocketAddr, query: &Q) -> Message {
    let bytes = udp_raw(server, &query.bytes())
        .await
        .expect("an answer over UDP");
    Message::from_vec(&bytes).unwrap()
}

async fn tcp(server: SocketAddr, query: &Q) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let packet = query.bytes();
    stream
        .write_all(&(packet.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&packet).await.unwrap();
    let read = async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; len.into()];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    };
    let bytes = tokio::time::timeout(WAIT, read)
        .await
        .expect("an answer over TCP");
    Message::from_vec(&bytes).unwrap()
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

/// (source prefix, scope prefix) of the answer's Client Subnet option.
fn scope(m: &Message) -> Option<(u8, u8)> {
    match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some((s.source_prefix(), s.scope_prefix())),
        _ => None,
    }
}

fn all_up() -> Arc<dyn DatacenterHealth> {
    Arc::new(dns::AllUp)
}

#[tokio::test]
async fn authoritative_refused_negative_and_cname_answers_over_udp_and_tcp() {
    let server = start(all_up()).await;
    for over_tcp in [false, true] {
        let ask = |query: Q| {
            let addr = server.addr;
            async move {
                if over_tcp {
                    tcp(addr, &query).await
                } else {
                    udp(addr, &query).await
                }
            }
        };
        let m = ask(q("ns1.mysite.com.", RecordType::A)).await;
        assert_eq!(m.metadata.id, 0x4242);
        assert!(m.metadata.authoritative, "AA");
        assert!(m.metadata.recursion_desired && !m.metadata.recursion_available);
        assert_eq!(addresses(&m), ["192.0.2.53"]);
        assert_eq!(m.answers[0].ttl, 300);

        let m = ask(q("www.example.org.", RecordType::A)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(m.answers.is_empty() && !m.metadata.authoritative);

        let m = ask(q("nope.mysite.com.", RecordType::A)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.metadata.authoritative);
        let soa = &m.authorities[0];
        assert_eq!(soa.record_type(), RecordType::SOA);
        assert_eq!(soa.ttl, 60, "negative TTL = min(SOA TTL 300, minimum 60)");

        // NODATA: the name exists without the type.
        let m = ask(q("ns1.mysite.com.", RecordType::AAAA)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(m.authorities[0].ttl, 60);

        // Empty non-terminal: lab.mysite.com has only host.lab below it.
        let m = ask(q("lab.mysite.com.", RecordType::A)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);

        // www -> api (a geo name), in one answer, placed by ECS in London.
        let m = ask(q("www.mysite.com.", RecordType::A).ecs("81.2.69.160", 32)).await;
        assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(addresses(&m), ["198.51.100.10"]);
        assert_eq!(m.answers[1].ttl, 30, "the geo name's ttl");
        assert_eq!(scope(&m), Some((32, 27)));

        let m = ask(q("mysite.com.", RecordType::MX)).await;
        assert_eq!(m.answers.len(), 1);
    }
    server.stop().await;
}

#[tokio::test]
async fn geo_answers_by_ecs_with_the_aggregated_scope() {
    let server = start(all_up()).await;
    let a = server.addr;
    // London -> eu-west; Milton, WA -> us-east; Singapore -> ap-southeast.
    let cases = [
        ("81.2.69.160", 27, RecordType::A, vec!["198.51.100.10"], 27),
        (
            "81.2.69.160",
            27,
            RecordType::AAAA,
            vec!["2001:db8:e::10"],
            27,
        ),
        // Milton's /29 gets us-east first, as does the empty space
        // around it (the configured order): the whole /5 shares it.
        ("216.160.83.56", 32, RecordType::A, vec!["203.0.113.10"], 5),
        (
            "216.160.83.56",
            32,
            RecordType::AAAA,
            vec!["2001:db8:a::10"],
            5,
        ),
        ("214.0.0.1", 32, RecordType::A, vec!["192.0.2.10"], 24),
        // ap-southeast has no IPv6: NODATA, still scoped.
        ("214.0.0.0", 24, RecordType::AAAA, vec![], 24),
        // San Diego: us-east first, as the empty space around it.
        ("2001:480:10::", 48, RecordType::A, vec!["203.0.113.10"], 22),
    ];
    for (addr, source, qtype, expected, expected_scope) in cases {
        let m = udp(a, &q("api.mysite.com.", qtype).ecs(addr, source)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{addr}");
        assert_eq!(addresses(&m), expected, "{addr} {qtype}");
        assert_eq!(scope(&m), Some((source, expected_scope)), "{addr} {qtype}");
        if expected.is_empty() {
            assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        }
    }
    // A database miss: the configured order (us-east first), scoped to the
    // empty network the database reports, never past the source prefix.
    let m = udp(a, &q("api.mysite.com.", RecordType::A).ecs("1.1.1.0", 24)).await;
    assert_eq!(addresses(&m), ["203.0.113.10"]);
    let (source, miss_scope) = scope(&m).unwrap();
    assert_eq!(source, 24);
    assert!((1..=24).contains(&miss_scope), "{miss_scope}");

    // Static answers carry scope 0, the option is echoed as sent.
    let m = udp(
        a,
        &q("ns1.mysite.com.", RecordType::A).ecs("81.2.69.160", 32),
    )
    .await;
    assert_eq!(scope(&m), Some((32, 0)));
    let subnet = match m.edns.as_ref().unwrap().option(EdnsCode::Subnet) {
        Some(EdnsOption::Subnet(s)) => *s,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        subnet.addr(),
        "81.2.69.160".parse::<std::net::IpAddr>().unwrap()
    );
    let m = udp(
        a,
        &q("nope.mysite.com.", RecordType::A).ecs("81.2.69.160", 32),
    )
    .await;
    assert_eq!(scope(&m), Some((32, 0)));
    let m = udp(a, &q("example.org.", RecordType::A).ecs("81.2.69.160", 32)).await;
    assert_eq!(scope(&m), Some((32, 0)));

    // No ECS: the source address (127.0.0.1, a miss) decides: configured order.
    let m = udp(a, &q("api.mysite.com.", RecordType::A)).await;
    assert_eq!(addresses(&m), ["203.0.113.10"]);
    assert_eq!(scope(&m), None);
    server.stop().await;
}

/// ECS scope aggregation over UDP: the scope widens to the neighbours
/// that get the same answer (gdnsd's 1.1.1.1 example: the database says
/// /8, the answer holds for /7), never past the source prefix; overrides
/// still narrow it; a reload and a replaced database rebuild the trees.
#[tokio::test]
async fn ecs_scopes_widen_where_neighbours_agree_and_follow_reloads_and_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    std::fs::copy(geoip_db(), &db).unwrap();
    let mut config = config(false);
    config.geoip.as_mut().unwrap().database = Some(db.clone());
    let server = start(all_up()).await;
    server.data.store(Arc::new(compile(&config, all_up())));
    let a = server.addr;
    let ask = |addr: &'static str, source: u8| async move {
        let m = udp(a, &q("api.mysite.com.", RecordType::A).ecs(addr, source)).await;
        (addresses(&m), scope(&m).unwrap())
    };
    let locator = server.data.load().locator().clone();
    assert_eq!(locator.locate("1.1.1.1".parse().unwrap()).prefix_len, 8);
    assert_eq!(
        ask("1.1.1.1", 32).await,
        (vec!["203.0.113.10".into()], (32, 7))
    );
    assert_eq!(ask("1.1.1.0", 24).await.1, (24, 7));
    // Never past the source prefix.
    assert_eq!(ask("0.0.0.0", 4).await.1, (4, 4));
    assert_eq!(ask("1.0.0.0", 8).await.1, (8, 7));
    // London answers otherwise than its neighbours: its own /27.
    assert_eq!(
        ask("81.2.69.160", 32).await,
        (vec!["198.51.100.10".into()], (32, 27))
    );

    // A reload adding an override inside that /7 narrows the scopes
    // around it: 1.1.2.0/23 is the widest block without it.
    let mut reloaded = config.clone();
    reloaded.geoip.as_mut().unwrap().networks = vec![geolb::config::GeoNetwork {
        cidr: geolb::config::Cidr {
            addr: "1.1.1.0".parse().unwrap(),
            prefix: 24,
        },
        location: geolb::config::LatLon {
            lat: 51.5,
            lon: -0.1,
        },
        country: None,
        continent: None,
    }];
    server.data.store(Arc::new(compile(&reloaded, all_up())));
    assert_eq!(
        ask("1.1.1.1", 32).await,
        (vec!["198.51.100.10".into()], (32, 24))
    );
    assert_eq!(
        ask("1.1.2.1", 32).await,
        (vec!["203.0.113.10".into()], (32, 23))
    );
    server.data.store(Arc::new(compile(&config, all_up())));

    // Melbourne (214.0.1.0/24) is nearest ap-southeast, then us-east; the
    // Singapore /24 beside it has eu-west second: an answer of its own
    // once ap-southeast is down, so no wider scope. GeoLite2-City-Test
    // does not know Melbourne: the configured order, as the empty space
    // around it, and a wider scope.
    assert_eq!(
        ask("214.0.1.1", 32).await,
        (vec!["192.0.2.10".into()], (32, 24))
    );
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(dns::watch_geoip(
        server.data.clone(),
        Duration::from_millis(20),
        shutdown.clone(),
    ));
    let next = dir.path().join("next.mmdb");
    std::fs::copy(geoip_db().with_file_name("GeoLite2-City-Test.mmdb"), &next).unwrap();
    std::fs::rename(&next, &db).unwrap();
    eventually("the new database's scopes", WAIT, || async {
        ask("214.0.1.1", 32).await.0 == ["203.0.113.10"]
    })
    .await;
    let (_, (_, widened)) = ask("214.0.1.1", 32).await;
    assert!(widened < 24, "/{widened}");
    shutdown.cancel();
    tokio::time::timeout(WAIT, watcher).await.unwrap().unwrap();
    server.stop().await;
}

#[tokio::test]
async fn malformed_client_subnet_is_formerr_through_real_sockets() {
    let server = start(all_up()).await;
    let bad = [
        // Bits set past the source prefix (hickory-proto accepts these).
        ecs_raw(1, 25, &[81, 2, 69, 160]),
        // More address octets than the prefix needs (also accepted by it).
        ecs_raw(1, 16, &[81, 2, 0]),
        // Prefix longer than the family allows, unknown family, too few
        // octets: hickory-server answers FORMERR before us.
        ecs_raw(1, 33, &[1, 2, 3, 4, 5]),
        ecs_raw(2, 129, &[0; 17]),
        ecs_raw(3, 8, &[10]),
        ecs_raw(1, 24, &[81, 2]),
    ];
    for option in bad {
        let mut query = q("api.mysite.com.", RecordType::A);
        query.ecs = Some(option.clone());
        let bytes = udp_raw(server.addr, &query.bytes())
            .await
            .unwrap_or_else(|| panic!("no answer for {option:?}"));
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::FormErr,
            "{option:?}"
        );
        assert_eq!(m.metadata.id, 0x4242);
        assert!(m.answers.is_empty());
    }
    server.stop().await;
}

/// A query of id 0x4242 built byte by byte (hickory-proto will not write
/// some of these): the header's third and fourth bytes, the question, and
/// an OPT (size 1232, the first flags byte, the options' bytes) if any.
fn conformance_query(
    flags: [u8; 2],
    (name, qtype, qclass): (&str, u16, u16),
    opt: Option<(u8, &[u8])>,
) -> Vec<u8> {
    let mut m = vec![0x42, 0x42, flags[0], flags[1], 0, 1, 0, 0, 0, 0, 0];
    m.push(u8::from(opt.is_some()));
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend(label.as_bytes());
    }
    m.push(0);
    m.extend(qtype.to_be_bytes());
    m.extend(qclass.to_be_bytes());
    if let Some((dnssec_ok, options)) = opt {
        m.extend([0, 0, 41, 0x04, 0xd0, 0, 0, dnssec_ok, 0]);
        m.extend((options.len() as u16).to_be_bytes());
        m.extend(options);
    }
    m
}

/// Issue 15's first conformance fixes, over UDP (the fast path for the
/// first query) and TCP: the DO bit comes back (RFC 3225 §3); a FORMERR
/// from hickory-proto's parser keeps the question and an OPT (RFC 6891
/// §7); NOTIMP keeps RD and CD; QCLASS ANY gets the IN data; TYPE0 is
/// FORMERR; REFUSED carries Extended DNS Error 20 (RFC 8914) with an OPT.
#[tokio::test]
async fn conformance_do_formerr_notimp_qclass_any_type0_and_ede() {
    const DO: u8 = 0x80;
    const RD: u8 = 0x01;
    const CD: u8 = 0x10;
    let server = start(all_up()).await;
    let family_3: &[u8] = &[0, 8, 0, 5, 0, 3, 8, 0, 10];
    for over_tcp in [false, true] {
        let ask = |packet: Vec<u8>| {
            let addr = server.addr;
            async move {
                let bytes = raw(addr, &packet, over_tcp)
                    .await
                    .unwrap_or_else(|| panic!("no answer to {packet:02x?}"));
                (Message::from_vec(&bytes).unwrap(), bytes)
            }
        };
        let a = ("api.mysite.com.", 1, 1);
        for (question, options, rcode) in [
            (a, &[][..], ResponseCode::NoError),
            (("nope.mysite.com.", 1, 1), &[], ResponseCode::NXDomain),
            (("www.example.org.", 1, 1), &[], ResponseCode::Refused),
            (a, family_3, ResponseCode::FormErr),
        ] {
            for dnssec_ok in [DO, 0] {
                let packet = conformance_query([RD, 0], question, Some((dnssec_ok, options)));
                let (m, _) = ask(packet).await;
                let case = format!("{question:?} DO {dnssec_ok} over TCP {over_tcp}");
                assert_eq!(m.metadata.response_code, rcode, "{case}");
                let edns = m.edns.as_ref().unwrap_or_else(|| panic!("{case}"));
                assert_eq!(edns.flags().dnssec_ok, dnssec_ok == DO, "{case}");
            }
        }

        // ECS family 3: hickory-proto's own FORMERR, with the question.
        let (m, _) = ask(conformance_query([RD, CD], a, Some((0, family_3)))).await;
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.queries[0].name().to_ascii(), "api.mysite.com.");
        assert!(m.metadata.recursion_desired && m.metadata.checking_disabled);

        // Opcode 3 (unassigned): NOTIMP with RD and CD.
        let (m, _) = ask(conformance_query([3 << 3 | RD, CD], a, None)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        assert!(m.metadata.recursion_desired && m.metadata.checking_disabled);

        let (m, _) = ask(conformance_query(
            [RD, 0],
            ("ns1.mysite.com.", 1, 255),
            None,
        ))
        .await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&m), ["192.0.2.53"]);
        let (m, _) = ask(conformance_query([RD, 0], ("ns1.mysite.com.", 1, 3), None)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);

        let (m, _) = ask(conformance_query([RD, 0], ("ns1.mysite.com.", 0, 1), None)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

        // Bytes after the last record the header counts: FORMERR with the
        // question (and the OPT when there was one), as BIND and Knot.
        for edns in [None, Some((DO, &[][..]))] {
            let mut packet = conformance_query([RD, 0], a, edns);
            packet.extend_from_slice(&[0xde, 0xad]);
            let (m, _) = ask(packet).await;
            let case = format!("trailing bytes, EDNS {edns:?}, over TCP {over_tcp}");
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "{case}");
            assert_eq!(m.queries.len(), 1, "{case}");
            assert_eq!(m.edns.is_some(), edns.is_some(), "{case}");
        }

        let refused = ("www.example.org.", 1, 1);
        let (_, bytes) = ask(conformance_query([RD, 0], refused, Some((0, &[])))).await;
        assert!(bytes.ends_with(&[0, 15, 0, 2, 0, 20]), "{bytes:02x?}");
        let (m, _) = ask(conformance_query([RD, 0], refused, None)).await;
        assert!(m.edns.is_none(), "EDE is an EDNS option: none without OPT");
    }
    server.stop().await;
}

#[tokio::test]
async fn big_answers_set_tc_over_udp_and_come_whole_over_tcp() {
    let server = start(all_up()).await;
    let mut query = q("big.mysite.com.", RecordType::TXT).ecs("81.2.69.160", 32);
    query.edns = Some(512);
    let m = udp(server.addr, &query).await;
    assert!(m.metadata.truncation, "TC");
    assert!(m.answers.is_empty());
    assert_eq!(scope(&m), Some((32, 0)), "the OPT record with ECS stays");

    let m = tcp(server.addr, &query).await;
    assert!(!m.metadata.truncation);
    let RData::TXT(txt) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    let total: usize = txt.txt_data.iter().map(|s| s.len()).sum();
    assert_eq!(total, 1000);

    // Without EDNS: 512 bytes.
    query.edns = None;
    assert!(udp(server.addr, &query).await.metadata.truncation);
    // 1232 is enough.
    query.edns = Some(4096);
    let m = udp(server.addr, &query).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 1);
    server.stop().await;
}

/// Whatever size a client advertises, the UDP answer fits it: whole when
/// it can, else truncated with TC.
#[tokio::test]
async fn udp_answers_never_exceed_the_clients_size() {
    let server = start(all_up()).await;
    let mut whole = None;
    for size in (500..=560).chain([1232, 4096]) {
        let mut query = q("edge.mysite.com.", RecordType::TXT);
        query.edns = Some(size);
        let bytes = udp_raw(server.addr, &query.bytes())
            .await
            .expect("an answer");
        let allowed = usize::from(size.clamp(512, 1232));
        assert!(
            bytes.len() <= allowed,
            "{} bytes for a client of {size}",
            bytes.len()
        );
        let m = Message::from_vec(&bytes).unwrap();
        if m.metadata.truncation {
            assert!(m.answers.is_empty());
            assert!(whole.is_none(), "TC at {size} after a whole answer");
        } else {
            assert_eq!(m.answers.len(), 1, "{size}");
            whole.get_or_insert(bytes.len());
        }
    }
    // The 480-byte TXT (538 bytes of answer) fits from some size on.
    let first_whole = whole.expect("a whole answer at 1232");
    assert!(first_whole > 512 && first_whole <= 560, "{first_whole}");
    server.stop().await;
}

/// `udp_threads = 2`: two sockets share the port (SO_REUSEPORT), each with
/// its thread; clients spread over them by the kernel all get answers.
#[tokio::test]
async fn several_udp_threads_share_one_port() {
    let config = config(false);
    let data: SharedDnsData = Arc::new(ArcSwap::from_pointee(compile(&config, all_up())));
    let sockets = dns::bind(&config.dns.as_ref().unwrap().listen, 2)
        .await
        .unwrap();
    let addr = sockets[0].local_addr().unwrap();
    let ports: Vec<u16> = sockets[0]
        .udp
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    assert_eq!(ports, [addr.port(), addr.port()]);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(dns::serve(sockets, data, shutdown.clone()));
    let query = q("api.mysite.com.", RecordType::A).ecs("81.2.69.160", 32);
    // Many client ports, so both sockets are very likely picked; each
    // client must be answered whichever one it lands on.
    for _ in 0..40 {
        let m = udp(addr, &query).await;
        assert_eq!(addresses(&m), ["198.51.100.10"]);
    }
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the server stops promptly")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn down_and_drained_data_centers_move_the_answer() {
    let eu_down = Arc::new(AtomicBool::new(false));
    let flag = eu_down.clone();
    let health = Arc::new(move |i: usize| !(i == 0 && flag.load(Ordering::Relaxed)));
    let server = start(health.clone()).await;
    let london = || q("api.mysite.com.", RecordType::A).ecs("81.2.69.160", 32);

    assert_eq!(
        addresses(&udp(server.addr, &london()).await),
        ["198.51.100.10"]
    );
    eu_down.store(true, Ordering::Relaxed);
    assert_eq!(
        addresses(&udp(server.addr, &london()).await),
        ["203.0.113.10"],
        "eu-west down: the next nearest, us-east"
    );
    eu_down.store(false, Ordering::Relaxed);
    assert_eq!(
        addresses(&udp(server.addr, &london()).await),
        ["198.51.100.10"]
    );

    // A reload that drains eu-west swaps the data whole.
    server
        .data
        .store(Arc::new(compile(&config(true), health.clone())));
    assert_eq!(
        addresses(&udp(server.addr, &london()).await),
        ["203.0.113.10"]
    );
    // Drained and everything else down: fail open to undrained ones.
    let none_up: Arc<dyn DatacenterHealth> = Arc::new(|_: usize| false);
    server.data.store(Arc::new(compile(&config(true), none_up)));
    assert_eq!(
        addresses(&udp(server.addr, &london()).await),
        ["203.0.113.10"]
    );
    server.stop().await;
}

#[tokio::test]
async fn hostile_packets_do_not_kill_the_server() {
    let server = start(all_up()).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut seed = 0x2545_f491_u32;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect()
    };
    let valid = q("api.mysite.com.", RecordType::A)
        .ecs("81.2.69.160", 32)
        .bytes();
    let mut packets: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0xff; 11], vec![0xff; 12]];
    packets.extend((0..200).map(|i| random(1 + i * 7 % 600)));
    // Every prefix of a valid query, and the valid query with bytes flipped.
    packets.extend((0..valid.len()).map(|n| valid[..n].to_vec()));
    packets.extend((12..valid.len()).map(|i| {
        let mut p = valid.clone();
        p[i] ^= 0xff;
        p
    }));
    // A response (QR set): never answered, to avoid reflection.
    let mut response = valid.clone();
    response[2] |= 0x80;
    packets.push(response);
    for p in &packets {
        socket.send_to(p, server.addr).await.unwrap();
    }
    // Garbage over TCP too: a length, then noise, then a hang-up.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&[0, 40]).await.unwrap();
    stream.write_all(&random(40)).await.unwrap();
    drop(stream);

    // The burst may have filled the socket's queue on a loaded machine, so
    // ask as a resolver would: again after a timeout.
    let query = q("api.mysite.com.", RecordType::A).ecs("81.2.69.160", 32);
    let mut answer = None;
    for _ in 0..5 {
        answer = udp_raw(server.addr, &query.bytes()).await;
        if answer.is_some() {
            break;
        }
    }
    let m = Message::from_vec(&answer.expect("an answer within 5 tries")).unwrap();
    assert_eq!(addresses(&m), ["198.51.100.10"]);
    let m = tcp(server.addr, &q("api.mysite.com.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    server.stop().await;
}

/// `packet` over a new TCP connection, framed; the framed answer, or None
/// when the server sends none (closes or stays silent for `WAIT`).
async fn tcp_raw(server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await.unwrap();
    let read = async {
        let len = stream.read_u16().await.ok()?;
        let mut buf = vec![0u8; len.into()];
        stream.read_exact(&mut buf).await.ok()?;
        Some(buf)
    };
    tokio::time::timeout(WAIT, read).await.ok().flatten()
}

/// `packet` over TCP or UDP; the answer, if one comes.
async fn raw(server: SocketAddr, packet: &[u8], over_tcp: bool) -> Option<Vec<u8>> {
    if over_tcp {
        tcp_raw(server, packet).await
    } else {
        udp_raw(server, packet).await
    }
}

/// A query of type A for `labels` (lengths, each label that many `fill`
/// octets) under the root, with a header of id 0x1234 and RD.
fn long_name_query(labels: &[u8], fill: u8, suffix: &[u8]) -> Vec<u8> {
    let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for &len in labels {
        p.push(len);
        p.extend(std::iter::repeat_n(fill, len.into()));
    }
    p.extend_from_slice(suffix);
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

/// The query that panicked the UDP fast path: a name of 256 octets in
/// wire form (labels of 63, 63, 63 and 62 octets and the root's), now
/// FORMERR as the general path answers it, over UDP and TCP; a name of
/// 255 octets is answered; the server answers on.
#[tokio::test]
async fn a_name_of_256_octets_is_formerr_not_a_panic() {
    let server = start(all_up()).await;
    let crashed = long_name_query(&[63, 63, 63, 62], b'a', &[]);
    assert_eq!(crashed.len(), 12 + 256 + 4);
    for over_tcp in [false, true] {
        let bytes = raw(server.addr, &crashed, over_tcp)
            .await
            .unwrap_or_else(|| panic!("no answer (over TCP: {over_tcp})"));
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }
    // 255 octets under mysite.com (12 of them): NXDOMAIN with its SOA.
    let at_limit = long_name_query(&[63, 63, 63, 50], b'x', b"\x06mysite\x03com");
    assert_eq!(at_limit.len(), 12 + 255 + 4);
    for over_tcp in [false, true] {
        let bytes = raw(server.addr, &at_limit, over_tcp).await;
        let m = Message::from_vec(&bytes.expect("an answer")).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    }
    let m = udp(server.addr, &q("api.mysite.com.", RecordType::A)).await;
    assert_eq!(addresses(&m), ["203.0.113.10"]);
    server.stop().await;
}

/// Several messages sent at once on one connection (RFC 7766
/// pipelining), garbage and an empty one among them, are answered in
/// order on that connection.
#[tokio::test]
async fn tcp_answers_pipelined_messages_in_order_garbage_included() {
    let server = start(all_up()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let garbage = [0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12];
    let messages: [&[u8]; 4] = [
        &q("ns1.mysite.com.", RecordType::A).bytes(),
        &[],
        &garbage,
        &q("big.mysite.com.", RecordType::TXT).bytes(),
    ];
    let mut framed = Vec::new();
    for m in messages {
        framed.extend((m.len() as u16).to_be_bytes());
        framed.extend(m);
    }
    stream.write_all(&framed).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let read = async {
            let len = stream.read_u16().await.unwrap();
            let mut buf = vec![0u8; len.into()];
            stream.read_exact(&mut buf).await.unwrap();
            Message::from_vec(&buf).unwrap()
        };
        answers.push(tokio::time::timeout(WAIT, read).await.expect("an answer"));
    }
    assert_eq!(addresses(&answers[0]), ["192.0.2.53"]);
    assert_eq!(
        (answers[1].metadata.id, answers[1].metadata.response_code),
        (0xbeef, ResponseCode::FormErr)
    );
    assert_eq!(answers[2].answers.len(), 1, "1000 bytes of TXT, whole");
    server.stop().await;
}

/// Garbage with a whole header is answered with a bare FORMERR, over UDP
/// and over TCP, and each is counted as `qtype="malformed"` (the real
/// daemon, for its /metrics).
#[tokio::test]
async fn formerr_for_garbage_is_counted_over_udp_and_tcp() {
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        CONFIG
            .replace("GEOIP", &geoip_db().display().to_string())
            .replace("BIG", "small")
            .replace("EDGE", "edge")
            .replace("DRAIN", "false")
    );
    let geolb = support::Geolb::start(&text).await;
    let status = geolb.status().await;
    let server: SocketAddr = status["dns"]["udp"][0].as_str().unwrap().parse().unwrap();
    let malformed = |metrics: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("geolb_dns_queries_total{")
                    && l.contains("qtype=\"malformed\"")
                    && l.contains("rcode=\"FORMERR\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    // One question whose name starts with a reserved label type (0x80).
    let garbage = [
        0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0x80, 1, 2, 3,
    ];
    let mut counted = malformed(&geolb.metrics().await);
    assert_eq!(counted, 0.0);
    for over_tcp in [false, true] {
        let bytes = raw(server, &garbage, over_tcp)
            .await
            .unwrap_or_else(|| panic!("no FORMERR (over TCP: {over_tcp})"));
        // The header only: id, QR, RD kept, FORMERR, no records.
        assert_eq!(bytes, [0xbe, 0xef, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]);
        let metrics = geolb.metrics().await;
        counted += 1.0;
        assert_eq!(
            malformed(&metrics),
            counted,
            "over TCP: {over_tcp}\n{metrics}"
        );
    }
    // A response, however broken, is not answered (nor counted).
    let mut response = garbage;
    response[2] |= 0x80;
    assert_eq!(udp_raw(server, &response).await, None);
    assert_eq!(malformed(&geolb.metrics().await), counted);
}

#[tokio::test]
async fn lookup_explains_the_decision_with_the_daemons_states() {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("geolb.toml");
    let text = CONFIG
        .replace("GEOIP", &geoip_db().display().to_string())
        .replace("BIG", "small")
        .replace("DRAIN", "false");
    std::fs::write(&path, text).unwrap();

    // A stand-in for the daemon's /status: eu-west down.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    let body = r#"{"datacenters": [
                        {"name": "eu-west", "up": false, "drain": false},
                        {"name": "us-east", "up": true, "drain": false},
                        {"name": "ap-southeast", "up": true, "drain": true}]}"#;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        bytes::Bytes::from(body),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let ip = "81.2.69.160".parse().unwrap();
    let report = geolb::lookup::run(&path, ip, Some("api.mysite.com"), Some(admin))
        .await
        .unwrap();
    for expected in [
        "London",
        "GB",
        "81.2.69.160/27",
        "GeoIP2-City",
        "eu-west",
        "down",
        "drained",
        " km",
        "203.0.113.10",
        "2001:db8:a::10",
    ] {
        assert!(
            report.contains(expected),
            "{expected:?} missing from:\n{report}"
        );
    }
    let chosen: Vec<&str> = report.lines().filter(|l| l.contains("<- answer")).collect();
    assert!(
        chosen.len() == 1 && chosen[0].contains("us-east"),
        "{report}"
    );

    // No daemon: states unknown, the nearest is answered.
    let report = geolb::lookup::run(&path, ip, None, None).await.unwrap();
    assert!(report.contains("unknown"), "{report}");
    assert!(report.contains("198.51.100.10"), "{report}");
    let unplaced = geolb::lookup::run(&path, "1.1.1.1".parse().unwrap(), None, None)
        .await
        .unwrap();
    assert!(unplaced.contains("unknown coordinates"), "{unplaced}");
    // The database network and the aggregated scope (gdnsd's example).
    assert!(unplaced.contains("network:    1.0.0.0/8"), "{unplaced}");
    assert!(
        unplaced.contains("ECS scope:   /7 (wider than the deciding network's /8"),
        "{unplaced}"
    );
    let not_geo = geolb::lookup::run(&path, ip, Some("www.mysite.com"), None)
        .await
        .unwrap();
    assert!(not_geo.contains("not a geo name"), "{not_geo}");
}

#[tokio::test]
async fn a_geoip_database_changed_on_disk_is_reread_and_a_bad_one_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    std::fs::copy(geoip_db(), &db).unwrap();
    let mut config = config(false);
    config.geoip.as_mut().unwrap().database = Some(db.clone());
    let data: SharedDnsData = Arc::new(ArcSwap::from_pointee(compile(&config, all_up())));
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(dns::watch_geoip(
        data.clone(),
        Duration::from_millis(20),
        shutdown.clone(),
    ));
    let first = data.load_full();

    // Overwritten in place with garbage: refused, the old data stays.
    std::fs::write(&db, b"not a database").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(Arc::ptr_eq(&first, &data.load_full()));

    // Replaced by rename, as geoipupdate does: picked up.
    let next = dir.path().join("next.mmdb");
    std::fs::copy(geoip_db(), &next).unwrap();
    std::fs::rename(&next, &db).unwrap();
    eventually("the replaced database re-read", WAIT, || async {
        !Arc::ptr_eq(&first, &data.load_full())
    })
    .await;
    let fresh = data.load_full();
    assert!(!Arc::ptr_eq(
        first.locator().database().unwrap(),
        fresh.locator().database().unwrap()
    ));
    let london = fresh.locator().locate("81.2.69.160".parse().unwrap());
    assert_eq!(london.city.as_deref(), Some("London"));
    shutdown.cancel();
    tokio::time::timeout(WAIT, watcher).await.unwrap().unwrap();
}

/// What UDP answers again from its packet cache (NXDOMAIN, NODATA, MX,
/// TXT; not a CNAME into a geo name, which is not kept) is, under each
/// query's own id, what TCP's general path answers; and a reload (a new
/// config) is answered from at once, whatever was kept.
#[tokio::test]
async fn repeated_udp_queries_get_the_general_answer_under_their_id_until_a_reload() {
    let server = start(all_up()).await;
    let with_id = |query: &Q, id: u16| {
        let mut bytes = query.bytes();
        bytes[..2].copy_from_slice(&id.to_be_bytes());
        bytes
    };
    let queries = [
        q("nothing.mysite.com.", RecordType::A),
        q("NoThInG.mysite.com.", RecordType::MX),
        q("mysite.com.", RecordType::MX),
        q("mysite.com.", RecordType::TXT),
        q("ns1.mysite.com.", RecordType::TXT),
        q("www.mysite.com.", RecordType::A),
        // No data center has an MX: NODATA for every client, kept.
        q("api.mysite.com.", RecordType::MX),
        q("mysite.com.", RecordType::MX).ecs("81.2.69.160", 24),
    ];
    for query in &queries {
        let mut answers = Vec::new();
        for id in [0x0101, 0x0202, 0x0303] {
            let udp = udp_raw(server.addr, &with_id(query, id))
                .await
                .expect("an answer over UDP");
            let tcp = tcp_raw(server.addr, &with_id(query, id))
                .await
                .expect("an answer over TCP");
            assert_eq!(udp, tcp, "{} {:?} id {id:#x}", query.name, query.qtype);
            answers.push(udp);
        }
        let first = Message::from_vec(&answers[0]).unwrap();
        assert!(first.metadata.authoritative, "{}", query.name);
    }
    let mx = |m: &Message| -> Vec<String> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some(format!("{} {}", mx.preference, mx.exchange)),
                _ => None,
            })
            .collect()
    };
    let before = udp(server.addr, &q("mysite.com.", RecordType::MX)).await;
    assert_eq!(mx(&before), ["10 mail.mysite.com."]);
    let mut reloaded = config(false);
    for record in &mut reloaded.dns.as_mut().unwrap().zones[0].records {
        if let geolb::config::RecordData::Mx { preference, .. } = &mut record.data {
            *preference = 20;
        }
    }
    server.data.store(Arc::new(compile(&reloaded, all_up())));
    let after = udp(server.addr, &q("mysite.com.", RecordType::MX)).await;
    assert_eq!(mx(&after), ["20 mail.mysite.com."], "the reload's MX");
    server.stop().await;
}
