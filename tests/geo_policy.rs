//! GeoDNS policy maps, spill-over and weights through the real daemon:
//! clients placed by ECS (the test City database and `[[geoip.network]]`
//! overrides), data centers taken down through the admin API, answers
//! read over UDP.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use support::{Geolb, eventually, request};

const WAIT: Duration = Duration::from_secs(10);
/// Client networks asked per proportion check: 10.N.M.0/24, all placed in
/// London by the 10.0.0.0/8 override.
const NETWORKS: u32 = 400;

const CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:0"

[runtime]
shutdown_grace = "2s"

[geoip]
database = "GEOIP"

[[geoip.network]]
cidr = "10.0.0.0/8"
location = { lat = 51.5, lon = -0.1 }
country = "GB"
continent = "EU"

[[geoip.network]]
cidr = "172.16.0.0/12"
location = { lat = 40.7, lon = -74.0 }
country = "US"
continent = "NA"

[dns]
listen = ["127.0.0.1:0"]

[[dns.zone]]
origin = "mysite.com"
soa = { mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }
ns = ["ns1.mysite.com."]

[[dns.geo]]
name = "api.mysite.com"
datacenters = ["eu-west", "eu-central", "us-east", "us-west", "ap-southeast"]

[[dns.geo.map]]
continent = "EU"
datacenters = ["eu-central", "eu-west"]
only = true

[[dns.geo.map]]
country = "US"
datacenters = ["us-west"]

[[dns.geo.map]]
subdivision = "US-WA"
datacenters = ["us-east"]

[[dns.geo.map]]
cidr = "CIDR"
datacenters = ["ap-southeast"]

[[dns.geo]]
name = "eu.mysite.com"
datacenters = ["eu-west", "eu-central", "us-east", "us-west", "ap-southeast"]

[[dns.geo.map]]
continent = "EU"
datacenters = ["eu-west", "eu-central"]
only = true
failover_outside = true

[[dns.geo]]
name = "spill.mysite.com"
datacenters = ["eu-west", "eu-central", "us-east", "us-west", "ap-southeast"]
spill_over = 2

[[dns.geo]]
name = "canary.mysite.com"
datacenters = ["eu-west", "eu-central", "us-east"]

[[dns.geo.map]]
country = "GB"
datacenters = [{ name = "eu-west", weight = 70 }, { name = "eu-central", weight = 30 }]

[[dns.geo]]
name = "weighted.mysite.com"
datacenters = ["weighted"]

[[datacenter]]
name = "eu-west"
location = { lat = 53.35, lon = -6.26 }
addresses = ["198.51.100.1"]
always_up = true

[[datacenter]]
name = "eu-central"
location = { lat = 50.11, lon = 8.68 }
addresses = ["198.51.100.2"]
capacity = 3
always_up = true

[[datacenter]]
name = "us-east"
location = { lat = 39.04, lon = -77.49 }
addresses = ["203.0.113.1"]
always_up = true

[[datacenter]]
name = "us-west"
location = { lat = 45.6, lon = -121.2 }
addresses = ["203.0.113.2"]
always_up = true

[[datacenter]]
name = "ap-southeast"
location = { lat = 1.35, lon = 103.82 }
addresses = ["192.0.2.10"]
always_up = true

[[datacenter]]
name = "weighted"
location = { lat = 0, lon = 0 }
addresses = [{ addr = "192.0.2.61", weight = 3 }, "192.0.2.62"]
always_up = true
"#;

const EU_WEST: &str = "198.51.100.1";
const EU_CENTRAL: &str = "198.51.100.2";
const US_EAST: &str = "203.0.113.1";
const US_WEST: &str = "203.0.113.2";
const AP: &str = "192.0.2.10";

fn config(cidr: &str) -> String {
    let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/GeoIP2-City-Test.mmdb");
    CONFIG
        .replace("GEOIP", &db.display().to_string())
        .replace("CIDR", cidr)
}

async fn start() -> (Geolb, SocketAddr) {
    let geolb = Geolb::start(&config("10.99.0.0/16")).await;
    let dns = geolb.dns_addr().await;
    (geolb, dns)
}

/// The A addresses answered for `name` to a client at `subnet` (ECS, /24
/// for the overrides' 10/8 and 172.16/12, else /32: the test database's
/// networks are smaller than /24), and the scope of the answer.
async fn ask(server: SocketAddr, name: &str, subnet: &str) -> (Vec<String>, u8) {
    let source = if subnet.starts_with("10.") || subnet.starts_with("172.") {
        24
    } else {
        32
    };
    let mut msg = Message::new(0x4242, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let mut edns = Edns::new();
    edns.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::new(
            subnet.parse().unwrap(),
            source,
            0,
        )));
    msg.set_edns(edns);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let reply = support::udp_exchange(&socket, server, &msg.to_vec().unwrap()).await;
    let reply = Message::from_vec(&reply).unwrap();
    let addresses = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    let scope = match reply.edns.as_ref().and_then(|e| e.option(EdnsCode::Subnet)) {
        Some(EdnsOption::Subnet(s)) => s.scope_prefix(),
        _ => panic!("no Client Subnet in the answer for {name} to {subnet}"),
    };
    (addresses, scope)
}

/// How many of the `NETWORKS` London networks get each single address.
async fn spread(server: SocketAddr, name: &str) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for i in 0..NETWORKS {
        let subnet = format!("10.{}.{}.0", i / 256, i % 256);
        let (addresses, scope) = ask(server, name, &subnet).await;
        assert_eq!(addresses.len(), 1, "{name} to {subnet}: {addresses:?}");
        assert_eq!(
            scope, 24,
            "{name} to {subnet}: the hash decided, for the /24"
        );
        // Another client of the same network gets the same answer.
        let again = format!("10.{}.{}.77", i / 256, i % 256);
        assert_eq!(ask(server, name, &again).await.0, addresses, "{again}");
        *counts.entry(addresses[0].clone()).or_default() += 1;
    }
    counts
}

fn share(counts: &HashMap<String, u32>, addr: &str) -> f64 {
    f64::from(counts.get(addr).copied().unwrap_or(0)) / f64::from(NETWORKS)
}

async fn set(geolb: &Geolb, dc: &str, state: &str) {
    let path = format!("/datacenters/{dc}/{state}");
    let (code, _, body) = request(geolb.admin, "POST", &path, &[], Bytes::new())
        .await
        .expect("admin request");
    assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn the_most_specific_map_entry_decides_and_cidr_entries_narrow_the_scope() {
    let (geolb, dns) = start().await;
    let cases = [
        // Continent EU (London, GB-ENG): the entry's first data center,
        // though eu-west is nearer.
        ("api.mysite.com", "81.2.69.160", EU_CENTRAL, 27),
        // A record with a continent only (no coordinates).
        ("api.mysite.com", "2.3.3.1", EU_CENTRAL, 24),
        // US-WA (Milton) beats US, which beats nearest (us-west).
        ("api.mysite.com", "216.160.83.56", US_EAST, 29),
        // US without a subdivision (the override): the country's entry,
        // though us-east is nearer to New York.
        ("api.mysite.com", "172.16.5.0", US_WEST, 12),
        // The CIDR entry beats the override's continent; its scope is the
        // entry's /16, and outside it long enough to tell the two apart.
        ("api.mysite.com", "10.99.1.0", AP, 16),
        ("api.mysite.com", "10.1.2.0", EU_CENTRAL, 10),
        // No entry for Singapore: nearest.
        ("api.mysite.com", "214.0.0.1", AP, 24),
        // A name without a map is unchanged, but for its scope: without
        // CIDR entries, its neighbours that get the same order widen it.
        ("spill.mysite.com", "10.1.2.0", EU_WEST, 2),
    ];
    for (name, subnet, expected, scope) in cases {
        let got = ask(dns, name, subnet).await;
        assert_eq!(
            got,
            (vec![expected.to_owned()], scope),
            "{name} to {subnet}"
        );
    }
    let metrics = geolb.metrics().await;
    let series = "geolb_dns_geo_answers_total{name=\"api.mysite.com\",datacenter=\"ap-southeast\"}";
    assert!(
        support::metric_value(&metrics, series).is_some_and(|n| n >= 2.0),
        "{series} in:\n{metrics}"
    );

    // Reloaded like the rest: the CIDR entry moves.
    geolb.write_config(&config("10.1.0.0/16")).unwrap();
    let (code, _, body) = request(geolb.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    eventually("the reloaded map answers", WAIT, || async {
        ask(dns, "api.mysite.com", "10.1.2.0").await == (vec![AP.to_owned()], 16)
    })
    .await;
    assert_eq!(
        ask(dns, "api.mysite.com", "10.99.1.0").await,
        (vec![EU_CENTRAL.to_owned()], 10)
    );
}

#[tokio::test]
async fn residency_holds_when_the_regions_data_centers_are_down_unless_configured() {
    let (geolb, dns) = start().await;
    let london = "10.1.2.0";
    assert_eq!(ask(dns, "api.mysite.com", london).await.0, [EU_CENTRAL]);
    set(&geolb, "eu-central", "down").await;
    eventually("eu-west answers for EU", WAIT, || async {
        ask(dns, "api.mysite.com", london).await.0 == [EU_WEST]
    })
    .await;
    set(&geolb, "eu-west", "down").await;
    // Both EU data centers down: api.mysite.com fails open inside the
    // region (its entry's first), eu.mysite.com may leave it
    // (failover_outside) for the nearest outside one.
    eventually("eu.mysite.com fails over outside", WAIT, || async {
        ask(dns, "eu.mysite.com", london).await.0 == [US_EAST]
    })
    .await;
    for _ in 0..5 {
        assert_eq!(ask(dns, "api.mysite.com", london).await.0, [EU_CENTRAL]);
    }
    // Spill-over and non-EU clients are unaffected by the EU entry.
    assert_eq!(ask(dns, "api.mysite.com", "214.0.0.1").await.0, [AP]);
    set(&geolb, "eu-central", "auto").await;
    eventually("eu.mysite.com comes back inside", WAIT, || async {
        ask(dns, "eu.mysite.com", london).await.0 == [EU_CENTRAL]
    })
    .await;
}

#[tokio::test]
async fn spill_over_spreads_a_failed_data_centers_clients_by_capacity() {
    let (geolb, dns) = start().await;
    set(&geolb, "eu-west", "down").await;
    eventually("eu-west is out", WAIT, || async {
        ask(dns, "spill.mysite.com", "10.0.0.0").await.0 != [EU_WEST]
    })
    .await;
    // Next two available from London: eu-central (capacity 3) and us-east
    // (capacity 1), never a third.
    let counts = spread(dns, "spill.mysite.com").await;
    let central = share(&counts, EU_CENTRAL);
    assert!((central - 0.75).abs() < 0.07, "{counts:?}");
    assert!((share(&counts, US_EAST) - 0.25).abs() < 0.07, "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");

    let admin = geolb.admin;
    let report = geolb::lookup::run(
        &geolb.config_path(),
        "10.0.0.1".parse().unwrap(),
        Some("spill.mysite.com"),
        Some(admin),
    )
    .await
    .unwrap();
    for expected in [
        "spill-over: eu-west is not available",
        "eu-central (capacity 3, 75%)",
        "us-east (capacity 1, 25%)",
        "lands on",
        "ECS scope:  /24",
    ] {
        assert!(
            report.contains(expected),
            "{expected:?} missing from:\n{report}"
        );
    }
}

#[tokio::test]
async fn splits_and_weighted_addresses_follow_their_weights() {
    let (geolb, dns) = start().await;
    let counts = spread(dns, "canary.mysite.com").await;
    assert!((share(&counts, EU_WEST) - 0.7).abs() < 0.07, "{counts:?}");
    assert!(
        (share(&counts, EU_CENTRAL) - 0.3).abs() < 0.07,
        "{counts:?}"
    );
    let counts = spread(dns, "weighted.mysite.com").await;
    assert!(
        (share(&counts, "192.0.2.61") - 0.75).abs() < 0.07,
        "{counts:?}"
    );
    assert!(
        (share(&counts, "192.0.2.62") - 0.25).abs() < 0.07,
        "{counts:?}"
    );

    let report = |ip: &'static str, name: &'static str| {
        let path = geolb.config_path();
        async move {
            geolb::lookup::run(&path, ip.parse().unwrap(), Some(name), None)
                .await
                .unwrap()
        }
    };
    let canary = report("10.0.0.1", "canary.mysite.com").await;
    for expected in [
        "dns.geo[3].map[0] (country = \"GB\": the client's country is GB)",
        "split:      eu-west (weight 70, 70%), eu-central (weight 30, 30%); this client network starts at",
    ] {
        assert!(
            canary.contains(expected),
            "{expected:?} missing from:\n{canary}"
        );
    }
    let weighted = report("10.0.0.1", "weighted.mysite.com").await;
    assert!(
        weighted.contains("weighted:   weighted: 192.0.2.6"),
        "{weighted}"
    );
    assert!(weighted.contains("of 4)"), "{weighted}");
    let api = report("10.99.0.1", "api.mysite.com").await;
    let expected = "cidr = \"10.99.0.0/16\": the address 10.99.0.1 is in it";
    assert!(api.contains(expected), "{expected:?} missing from:\n{api}");
    assert!(!api.contains("excluded:"), "{api}");
    let eu = report("10.1.0.1", "api.mysite.com").await;
    for expected in [
        "continent = \"EU\": the client's continent is EU); only its datacenters",
        "excluded:   us-east, us-west, ap-southeast",
    ] {
        assert!(eu.contains(expected), "{expected:?} missing from:\n{eu}");
    }
    let singapore = report("214.0.0.1", "api.mysite.com").await;
    let expected = "no map entry matches (continent AS, country SG";
    assert!(singapore.contains(expected), "{singapore}");
}

#[test]
fn a_bad_map_is_refused_with_its_key_and_line() {
    let text = config("10.99.0.0/16").replace(
        "datacenters = [\"us-west\"]\n",
        "datacenters = [\"us-west\", \"mars\"]\n",
    );
    let (ok, stdout, stderr) = support::geolb_check(&text);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("dns.geo[0].map[1].datacenters[1]") && stderr.contains("line 42"),
        "{stderr}"
    );
}
