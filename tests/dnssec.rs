//! DNSSEC online signing over real sockets, checked by a real validator:
//! BIND's `delv` (Debian: bind9-dnsutils), given the zone's DS as its
//! trust anchor, must call each answer "fully validated". Without delv
//! the tests say SKIPPED, unless GEOLB_REQUIRE_DELV is set (CI).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::dnssec::Verifier;
use hickory_proto::dnssec::rdata::{DNSSECRData, RRSIG};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use support::{Geolb, bounded, eventually, geolb_check, metric_value};

const WAIT: Duration = Duration::from_secs(10);

/// delv, or None (the test then skips) unless GEOLB_REQUIRE_DELV is set.
fn delv_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("delv"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("GEOLB_REQUIRE_DELV").is_none(),
            "GEOLB_REQUIRE_DELV is set but delv is not installed (apt-get install bind9-dnsutils)"
        );
        eprintln!("SKIPPED: delv is not installed (Debian: apt-get install bind9-dnsutils)");
    }
    found
}

/// A private key as `openssl genpkey` writes it, in `dir`.
fn key(dir: &Path, name: &str, ed25519: bool) -> PathBuf {
    let path = dir.join(name);
    let args: &[&str] = if ed25519 {
        &["-algorithm", "ed25519"]
    } else {
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    };
    let status = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&path)
        .status()
        .expect("openssl");
    assert!(status.success());
    path
}

fn geoip_db() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/GeoIP2-City-Test.mmdb")
}

/// A signed zone with `keys` (the inside of `keys = [...]`): static names,
/// a wildcard, a long TXT, and a geo name whose answer for loopback
/// clients (delv) is eu-west, by an override.
fn config(keys: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[geoip]
database = "{db}"

[[geoip.network]]
cidr = "127.0.0.0/8"
location = {{ lat = 50.11, lon = 8.68 }}

[dns]
listen = ["127.0.0.1:0"]

[[dns.zone]]
origin = "mysite.com"
ttl = 300
soa = {{ mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }}
ns = ["ns1.mysite.com."]
dnssec = {{ keys = [{keys}], validity = "14d", refresh = "7d" }}
records = [
  {{ name = "ns1", type = "A", value = "192.0.2.53" }},
  {{ name = "@", type = "MX", value = "10 mail.mysite.com." }},
  {{ name = "@", type = "TXT", value = "v=spf1 -all" }},
  {{ name = "*.wild", type = "A", value = "192.0.2.2" }},
  {{ name = "a.deep", type = "A", value = "192.0.2.1" }},
  {{ name = "big", type = "TXT", value = "{big}" }},
]

[[dns.geo]]
name = "api.mysite.com"
ttl = 30
datacenters = ["us-east", "eu-west"]

[[datacenter]]
name = "eu-west"
location = {{ lat = 53.35, lon = -6.26 }}
addresses = ["198.51.100.10", "2001:db8:e::10"]
always_up = true

[[datacenter]]
name = "us-east"
location = {{ lat = 39.04, lon = -77.49 }}
addresses = ["203.0.113.10"]
always_up = true
"#,
        db = geoip_db().display(),
        big = "x".repeat(600),
    )
}

fn csk(file: &Path, state: &str) -> String {
    format!(
        "{{ file = \"{}\", role = \"csk\", state = \"{state}\" }}",
        file.display()
    )
}

/// The DS lines `geolb check` prints for `config`.
fn ds_lines(config: &str) -> Vec<String> {
    let (ok, stdout, stderr) = geolb_check(config);
    assert!(ok, "{stdout}{stderr}");
    stdout
        .lines()
        .filter(|l| l.contains(" IN DS "))
        .map(str::to_owned)
        .collect()
}

/// A delv trust anchor file for the DS line `ds` ("mysite.com. IN DS tag
/// alg digest-type HEX").
fn anchor(dir: &Path, name: &str, ds: &str) -> PathBuf {
    let f: Vec<&str> = ds.split_whitespace().collect();
    let [owner, "IN", "DS", tag, alg, digest_type, hex] = f[..] else {
        panic!("not a DS line: {ds}");
    };
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("trust-anchors {{ {owner} static-ds {tag} {alg} {digest_type} \"{hex}\"; }};\n"),
    )
    .unwrap();
    path
}

async fn start(config: &str) -> (Geolb, SocketAddr) {
    let geolb = Geolb::start(config).await;
    let addr = geolb.dns_addr().await;
    (geolb, addr)
}

/// What delv prints for `name type` asked of `server`, validating from the
/// trust anchor in `anchor` (stdout and stderr together).
async fn delv(delv: &Path, server: SocketAddr, anchor: &Path, name: &str, qtype: &str) -> String {
    let run = tokio::process::Command::new(delv)
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "-a"])
        .arg(anchor)
        .args(["+root=mysite.com", name, qtype])
        .kill_on_drop(true)
        .output();
    let out = bounded(WAIT, &format!("delv {name} {qtype}"), run)
        .await
        .expect("run delv");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn query(name: &str, qtype: RecordType, dnssec_ok: bool, size: u16) -> Message {
    let mut m = Message::new(0x5353, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let mut e = Edns::new();
    e.set_max_payload(size);
    e.set_dnssec_ok(dnssec_ok);
    m.set_edns(e);
    m
}

async fn udp(server: SocketAddr, m: &Message) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&m.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = bounded(
        Duration::from_secs(2),
        "a UDP answer",
        socket.recv(&mut buf),
    )
    .await
    .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

fn rrsigs(records: &[Record]) -> Vec<&RRSIG> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::RRSIG(sig)) => Some(sig),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn signed_answers_validate_with_delv() {
    let Some(delv_bin) = delv_binary() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let p256 = key(keys.path(), "csk.pem", false);
    let config = config(&csk(&p256, "active"));
    let ds = ds_lines(&config);
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert!(ds[0].contains(" 13 2 "), "P-256 is algorithm 13: {ds:?}");
    let anchor = anchor(keys.path(), "anchor.conf", &ds[0]);
    let (geolb, server) = start(&config).await;
    let ask = |name: &'static str, qtype: &'static str| {
        let (delv_bin, anchor) = (delv_bin.clone(), anchor.clone());
        async move { delv(&delv_bin, server, &anchor, name, qtype).await }
    };

    for (name, qtype, expect) in [
        ("ns1.mysite.com", "A", "192.0.2.53"),
        ("api.mysite.com", "A", "198.51.100.10"),
        ("mysite.com", "MX", "10 mail.mysite.com."),
        ("mysite.com", "TXT", "v=spf1 -all"),
        ("mysite.com", "DNSKEY", "257 3 13"),
        ("mysite.com", "CDS", " 13 2 "),
        ("mysite.com", "CDNSKEY", "257 3 13"),
        ("x.wild.mysite.com", "A", "192.0.2.2"),
        ("api.mysite.com", "AAAA", "2001:db8:e::10"),
    ] {
        let out = ask(name, qtype).await;
        assert!(
            out.contains("; fully validated") && out.contains(expect),
            "{name} {qtype}:\n{out}"
        );
    }
    // Compact denial: a name that does not exist, NODATA at a static name,
    // at an empty non-terminal and at a geo name.
    for (name, qtype, nsec) in [
        (
            "nope.mysite.com",
            "A",
            "NSEC \\000.nope.mysite.com. RRSIG NSEC TYPE128",
        ),
        (
            "ns1.mysite.com",
            "AAAA",
            "NSEC \\000.ns1.mysite.com. A RRSIG NSEC",
        ),
        (
            "deep.mysite.com",
            "A",
            "NSEC \\000.deep.mysite.com. RRSIG NSEC",
        ),
        (
            "api.mysite.com",
            "TXT",
            "NSEC \\000.api.mysite.com. A AAAA RRSIG NSEC",
        ),
    ] {
        let out = ask(name, qtype).await;
        assert!(
            out.contains("; negative response, fully validated") && out.contains(nsec),
            "{name} {qtype}:\n{out}"
        );
    }

    // Without DO: no signatures, and NXDOMAIN stays NXDOMAIN.
    let plain = udp(
        server,
        &query("ns1.mysite.com.", RecordType::A, false, 1232),
    )
    .await;
    assert_eq!(plain.answers.len(), 1);
    assert!(!plain.edns.as_ref().unwrap().flags().dnssec_ok);
    let nx = udp(
        server,
        &query("nope.mysite.com.", RecordType::A, false, 1232),
    )
    .await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(rrsigs(&nx.authorities).is_empty());
    let nx = udp(
        server,
        &query("nope.mysite.com.", RecordType::A, true, 1232),
    )
    .await;
    assert_eq!(
        nx.metadata.response_code,
        ResponseCode::NoError,
        "compact denial"
    );

    // A geo answer by Client Subnet, signed: the American client gets
    // us-east, with its scope, and the RRSIG verifies against the DNSKEY
    // that delv validated above.
    let dnskeys = udp(
        server,
        &query("mysite.com.", RecordType::DNSKEY, true, 1232),
    )
    .await;
    let dnskey = dnskeys
        .answers
        .iter()
        .find_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::DNSKEY(k)) => Some(k.clone()),
            _ => None,
        })
        .unwrap();
    let mut m = query("api.mysite.com.", RecordType::A, true, 1232);
    let subnet = ClientSubnet::new("216.160.83.56".parse::<IpAddr>().unwrap(), 24, 0);
    m.edns
        .as_mut()
        .unwrap()
        .options_mut()
        .insert(EdnsOption::Subnet(subnet));
    let reply = udp(server, &m).await;
    let a: Vec<&Record> = reply
        .answers
        .iter()
        .filter(|r| r.record_type() == RecordType::A)
        .collect();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].data, RData::A("203.0.113.10".parse().unwrap()));
    let [sig] = rrsigs(&reply.answers)[..] else {
        panic!("one RRSIG: {:?}", reply.answers);
    };
    let owner = Name::from_ascii("api.mysite.com.").unwrap();
    dnskey
        .verify_rrsig(&owner, DNSClass::IN, sig, a.iter().copied())
        .expect("the signed geo answer verifies");
    let echoed = reply.edns.as_ref().unwrap();
    assert!(echoed.flags().dnssec_ok);
    match echoed.option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet) {
        Some(EdnsOption::Subnet(s)) => assert!(s.scope_prefix() > 0, "{s:?}"),
        other => panic!("no ECS in the reply: {other:?}"),
    }

    // Too big for the client's 512 bytes once signed: TC, with the OPT
    // and its DO bit kept, so the resolver retries over TCP.
    let big = udp(
        server,
        &query("big.mysite.com.", RecordType::TXT, true, 512),
    )
    .await;
    assert!(big.metadata.truncation);
    assert!(big.answers.is_empty());
    assert!(big.edns.as_ref().unwrap().flags().dnssec_ok);
    let out = ask("big.mysite.com", "TXT").await;
    assert!(out.contains("; fully validated"), "over TCP:\n{out}");

    // Signatures come from the cache: asking again makes none.
    let series = "geolb_dns_dnssec_signatures_total{zone=\"mysite.com.\"}";
    let made = metric_value(&geolb.metrics().await, series).expect("signatures counted");
    assert!(made > 0.0);
    for _ in 0..3 {
        let again = udp(server, &query("ns1.mysite.com.", RecordType::A, true, 1232)).await;
        assert_eq!(rrsigs(&again.answers).len(), 1);
    }
    assert_eq!(metric_value(&geolb.metrics().await, series), Some(made));
}

#[tokio::test]
async fn a_trust_anchor_for_another_key_is_rejected() {
    let Some(delv_bin) = delv_binary() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let served = key(keys.path(), "served.pem", true);
    let other = key(keys.path(), "other.pem", true);
    let config = config(&csk(&served, "active"));
    let ds = ds_lines(&config);
    assert!(ds[0].contains(" 15 2 "), "Ed25519 is algorithm 15: {ds:?}");
    let good = anchor(keys.path(), "good.conf", &ds[0]);
    let bad = anchor(
        keys.path(),
        "bad.conf",
        &ds_lines(&self::config(&csk(&other, "active")))[0],
    );
    let (_geolb, server) = start(&config).await;
    let out = delv(&delv_bin, server, &good, "ns1.mysite.com", "A").await;
    assert!(out.contains("; fully validated"), "{out}");
    let out = delv(&delv_bin, server, &bad, "ns1.mysite.com", "A").await;
    assert!(
        !out.contains("fully validated") && out.contains("resolution failed"),
        "a DS for a key the zone does not have must not validate:\n{out}"
    );
}

#[tokio::test]
async fn keys_roll_by_reload_without_a_restart() {
    let Some(delv_bin) = delv_binary() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let old = key(keys.path(), "old.pem", true);
    let new = key(keys.path(), "new.pem", false);
    let before = config(&csk(&old, "active"));
    let (geolb, server) = start(&before).await;
    let old_anchor = anchor(keys.path(), "old.conf", &ds_lines(&before)[0]);
    let dnskeys = || async {
        udp(
            server,
            &query("mysite.com.", RecordType::DNSKEY, true, 1232),
        )
        .await
        .answers
        .iter()
        .filter(|r| r.record_type() == RecordType::DNSKEY)
        .count()
    };
    let out = delv(&delv_bin, server, &old_anchor, "ns1.mysite.com", "A").await;
    assert!(out.contains("; fully validated"), "{out}");

    let reload = |config: String| {
        let geolb = &geolb;
        async move {
            geolb.write_config(&config).unwrap();
            let (status, _, body) =
                support::request(geolb.admin, "POST", "/reload", &[], Default::default())
                    .await
                    .unwrap();
            assert_eq!(status, 200, "{body:?}");
        }
    };
    // The new key published: both in DNSKEY, the old one still signing.
    let publish = config(&format!(
        "{}, {}",
        csk(&old, "active"),
        csk(&new, "publish")
    ));
    let new_ds = ds_lines(&publish);
    assert_eq!(new_ds.len(), 2, "both keys go to the parent: {new_ds:?}");
    reload(publish).await;
    eventually("two DNSKEYs", WAIT, || async { dnskeys().await == 2 }).await;
    let out = delv(&delv_bin, server, &old_anchor, "ns1.mysite.com", "A").await;
    assert!(out.contains("; fully validated"), "{out}");

    // Rolled: the new key signs, the old one is only published.
    let rolled = config(&format!("{}, {}", csk(&old, "retire"), csk(&new, "active")));
    let new_line = ds_lines(&rolled);
    assert_eq!(
        new_line.len(),
        1,
        "the retiring key leaves CDS: {new_line:?}"
    );
    let new_anchor = anchor(keys.path(), "new.conf", &new_line[0]);
    reload(rolled).await;
    let out = delv(&delv_bin, server, &new_anchor, "ns1.mysite.com", "A").await;
    assert!(out.contains("; fully validated"), "{out}");
    let out = delv(&delv_bin, server, &old_anchor, "ns1.mysite.com", "A").await;
    assert!(
        !out.contains("fully validated"),
        "the old key signs no more:\n{out}"
    );

    // Removed.
    reload(config(&csk(&new, "active"))).await;
    eventually("one DNSKEY", WAIT, || async { dnskeys().await == 1 }).await;
    let out = delv(&delv_bin, server, &new_anchor, "mysite.com", "DNSKEY").await;
    assert!(out.contains("; fully validated"), "{out}");
}
