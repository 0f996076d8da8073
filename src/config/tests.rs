//! Whole configurations: what they mean, and every error they hold.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::parse::read_document;
use super::values::parse_duration;
use super::*;

/// Every key, set once: the configuration reference users read.
const REFERENCE: &str = include_str!("../../config/reference.toml");
const REFERENCE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/reference.toml");

pub(super) fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_str(text, Path::new("/etc/geolb/geolb.toml"))
}

pub(super) fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(_) => panic!("expected errors from:\n{text}"),
        Err(ConfigErrors(errors)) => errors,
    }
}

#[test]
fn reference_file_parses_with_its_meaning() {
    let config = parse_str(REFERENCE, Path::new(REFERENCE_PATH)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.runtime,
        RuntimeConfig {
            worker_threads: Some(4),
            shutdown_grace: Duration::from_secs(30),
            state_dir: PathBuf::from("/var/lib/geolb"),
            huge_pages: true,
        }
    );
    let admin = config.admin.unwrap();
    assert_eq!(admin.listen, "127.0.0.1:9100".parse().unwrap());
    assert_eq!(
        admin.token_file,
        Some(PathBuf::from("/etc/geolb/admin.token"))
    );
    assert_eq!(
        admin.tls,
        [TlsCertConfig {
            cert: PathBuf::from("/etc/geolb/admin.pem"),
            key: PathBuf::from("/etc/geolb/admin.key"),
            ocsp: OcspConfig {
                enabled: Some(true),
                responder: Some("http://ocsp.internal.example/".into()),
            },
        }]
    );
    assert_eq!(admin.socket, Some(PathBuf::from("/run/geolb/admin.sock")));
    assert_eq!(admin.socket_mode, 0o660);
    let etc = |name: &str| Some(PathBuf::from("/etc/geolb").join(name));
    assert_eq!(
        config.cluster,
        Some(ClusterConfig {
            etcd: vec![
                "https://10.0.0.1:2379".into(),
                "https://10.0.0.2:2379".into(),
                "https://10.0.0.3:2379".into(),
            ],
            prefix: "/geolb/".into(),
            node: "eu-west-1".into(),
            datacenter: Some("eu-west".into()),
            ca: etc("etcd-ca.pem"),
            cert: etc("etcd-client.pem"),
            key: etc("etcd-client.key"),
            user: Some("geolb".into()),
            password_file: etc("etcd.password"),
            dial_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(10),
            config: ConfigFrom::File,
        })
    );

    let geoip = config.geoip.unwrap();
    assert_eq!(
        geoip.database,
        Some(PathBuf::from("/var/lib/geolb/GeoLite2-City.mmdb"))
    );
    let network = &geoip.networks[0];
    assert_eq!(
        network.cidr,
        Cidr {
            addr: "10.0.0.0".parse().unwrap(),
            prefix: 8
        }
    );
    assert_eq!(
        network.location,
        LatLon {
            lat: 50.11,
            lon: 8.68
        }
    );
    assert_eq!(network.country.as_deref(), Some("DE"));
    assert_eq!(network.continent.as_deref(), Some("EU"));

    let pools = &config.pools;
    assert_eq!(pools.len(), 4);
    assert_eq!(pools[0].balance, Balance::RoundRobin);
    assert_eq!(pools[0].hash, HashKey::ClientIp);
    assert_eq!(pools[0].min_healthy, 1);
    let check = pools[0].check.as_ref().unwrap();
    assert_eq!(
        check.probe,
        Probe::Http(HttpProbe {
            tls: false,
            path: "/health".into(),
            host: None,
            expect: vec![200],
            ca: None,
            verify: true,
        })
    );
    assert_eq!(
        (check.interval, check.timeout, check.rise, check.fall),
        (Duration::from_secs(2), Duration::from_secs(1), 2, 3)
    );
    let weights: Vec<(u32, bool)> = pools[0]
        .backends
        .iter()
        .map(|b| (b.weight, b.drain))
        .collect();
    assert_eq!(weights, [(1, false), (2, false), (1, true)]);
    assert_eq!(pools[1].balance, Balance::LeastConn);
    assert_eq!(pools[1].check.as_ref().unwrap().probe, Probe::Tcp);
    assert_eq!(
        pools[1].discovery,
        Some(DiscoveryConfig {
            prefix: "pools/web-us/".into()
        })
    );
    assert_eq!(pools[2].proxy_protocol, Some(ProxyProtocolVersion::V2));
    assert_eq!(pools[0].proxy_protocol, None);
    let origin = &pools[3];
    assert_eq!(
        (origin.balance, &origin.hash),
        (Balance::Maglev, &HashKey::Header("x-user".into()))
    );
    let ca = Path::new(REFERENCE_PATH).with_file_name("certs/origin-ca.pem");
    assert_eq!(
        origin.check.as_ref().unwrap().probe,
        Probe::Http(HttpProbe {
            tls: true,
            path: "/health".into(),
            host: Some("origin.internal".into()),
            expect: vec![200, 204],
            ca: Some(ca.clone()),
            verify: true,
        })
    );
    assert_eq!(origin.backend_protocol, BackendProtocol::H2);
    assert_eq!(
        origin.tls,
        Some(BackendTls {
            ca: Some(ca),
            verify: true,
            sni: Some("origin.internal".into()),
        })
    );

    let listeners = &config.listeners;
    assert_eq!(listeners[0].protocol, Protocol::Http);
    assert_eq!(
        listeners[0].timeouts,
        Timeouts {
            connect: Duration::from_secs(2),
            header: Duration::from_secs(10),
            request: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    );
    assert_eq!(listeners[0].retries, 2);
    assert_eq!(
        listeners[0].routes,
        [
            RouteConfig {
                host: Some("us.mysite.com".into()),
                path_prefix: None,
                pool: "web-us".into(),
                headers: HeaderRuleSet::default(),
                compress: None,
                rules: RequestRules::default(),
                rewrite: PathRewrite::Keep,
            },
            RouteConfig {
                host: None,
                path_prefix: Some("/us/".into()),
                pool: "web-us".into(),
                headers: HeaderRuleSet::default(),
                compress: None,
                rules: RequestRules::default(),
                rewrite: PathRewrite::Keep,
            },
        ]
    );
    assert_eq!(listeners[1].protocol, Protocol::Https);
    assert_eq!(listeners[1].timeouts, Timeouts::default());
    assert_eq!(
        listeners[1].tls[0].cert,
        Path::new(REFERENCE_PATH).with_file_name("certs/mysite.com.pem")
    );
    assert_eq!(
        listeners[1].tls[1].key,
        Path::new(REFERENCE_PATH).with_file_name("certs/us.mysite.com.key")
    );
    assert_eq!(listeners[3].protocol, Protocol::Tcp);
    assert_eq!(listeners[1].acme, None);
    let acme = listeners[4].acme.as_ref().unwrap();
    assert!(listeners[4].tls.is_empty());
    assert_eq!(acme.directory_host, "acme-v02.api.letsencrypt.org:443");
    assert_eq!(acme.names, ["mysite.com", "www.mysite.com"]);
    assert_eq!(acme.contact, ["mailto:ops@mysite.com"]);
    assert_eq!(acme.challenge, AcmeChallenge::TlsAlpn01);
    assert_eq!(
        acme.ca.as_deref(),
        Some(
            Path::new(REFERENCE_PATH)
                .with_file_name("certs/acme-ca.pem")
                .as_path()
        )
    );
    assert_eq!(acme.renew_before, DEFAULT_RENEW_BEFORE);
    assert!(!listeners[3].accept_proxy_protocol && !listeners[3].access_log);
    assert!(listeners[3].splice && listeners[0].splice);
    assert!(listeners[0].access_log);
    assert_eq!(listeners[0].max_connections, Some(10_000));
    assert_eq!(listeners[1].max_connections, None);
    assert_eq!(
        listeners[0].client_limits,
        Some(ClientLimits {
            max_connections: Some(100),
            requests_per_second: Some(50),
            burst: 100,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        })
    );
    assert_eq!(listeners[1].client_limits, None);
    assert_eq!(listeners[0].max_concurrent_streams, 100);
    assert_eq!(listeners[1].max_concurrent_streams, 100);
    assert_eq!(listeners[1].routes[0].pool, "origin");
    assert_eq!(listeners[1].routes[0].rewrite, PathRewrite::Strip);
    assert_eq!(listeners[1].routes[0].rules.max_body, Some(1 << 20));
    assert_eq!(
        listeners[1].routes[1].rewrite,
        PathRewrite::Replace("/v2/".into())
    );
    assert_eq!(
        listeners[2].rules.redirect,
        Some(RedirectConfig {
            to: RedirectTarget::Https { port: Some(8443) },
            code: 308
        })
    );
    assert_eq!(listeners[1].rules.max_body, Some(10_000_000));
    assert_eq!(listeners[1].error_pages.len(), 3);

    let dcs = &config.datacenters;
    assert_eq!(dcs[0].name, "eu-west");
    assert_eq!(
        dcs[0].location,
        LatLon {
            lat: 53.35,
            lon: -6.26
        }
    );
    assert_eq!(
        dcs[0].addresses,
        [
            "198.51.100.10".parse::<IpAddr>().unwrap(),
            "2001:db8:e::10".parse().unwrap()
        ]
    );
    assert_eq!(dcs[0].pools, ["web-eu"]);
    assert!(!dcs[0].drain && dcs[0].check.is_none());
    assert!(dcs[1].pools == ["web-us"] && dcs[2].pools.is_empty());
    assert!(dcs[3].always_up && dcs[3].pools.is_empty() && dcs[3].check.is_none());
    assert!(!dcs[0].always_up);
    let remote = dcs[2].check.as_ref().unwrap();
    assert_eq!(remote.target, "127.0.0.1:18093");
    assert_eq!(remote.check.probe, Probe::Tcp);
    let remote = dcs[1].check.as_ref().unwrap();
    assert_eq!(remote.target, "203.0.113.10:9443");
    assert_eq!(
        remote.check.probe,
        Probe::Http(HttpProbe {
            tls: true,
            path: "/datacenters/us-east".into(),
            host: Some("203.0.113.10".into()),
            expect: vec![200],
            ca: Some(Path::new(REFERENCE_PATH).with_file_name("certs/geolb-ca.pem")),
            verify: true,
        })
    );
    assert_eq!(remote.check.interval, Duration::from_secs(5));

    let dns = config.dns.unwrap();
    assert_eq!(
        dns.listen,
        ["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]
    );
    let zone = &dns.zones[0];
    assert_eq!(zone.origin, "mysite.com.");
    assert_eq!(zone.ttl, 300);
    assert_eq!(zone.soa.serial, 2026112701);
    assert_eq!(zone.soa.expire, Duration::from_secs(14 * 86400));
    assert_eq!(zone.ns, ["ns1.mysite.com.", "ns2.mysite.com."]);
    assert_eq!(zone.file, None);
    assert_eq!(
        dns.zones[1].file,
        Some(Path::new(REFERENCE_PATH).with_file_name("zones/mysite.org.zone"))
    );
    assert_eq!(dns.udp_threads, 1);
    assert_eq!(dns.rrl, RrlConfig::default());
    assert_eq!(dns.tcp, DnsTcpConfig::default());
    assert_eq!(
        dns.cookie_secret,
        Some([
            0xe5, 0xb8, 0xc8, 0xf5, 0xa4, 0xb0, 0xc1, 0xd2, 0xe3, 0xf4, 0x05, 0x16, 0x27, 0x38,
            0x49, 0x5a
        ])
    );
    let www = &zone.records[2];
    assert_eq!((www.name.as_str(), www.ttl), ("www.mysite.com.", 300));
    assert_eq!(www.data, RecordData::Cname("api.mysite.com.".into()));
    assert_eq!(zone.records[3].name, "mysite.com.");
    assert_eq!(
        zone.records[3].data,
        RecordData::Mx {
            preference: 10,
            exchange: "mail.mysite.com.".into()
        }
    );
    assert_eq!(zone.records[4].data, RecordData::Txt("v=spf1 -all".into()));
    let wildcard = &zone.records[7];
    assert_eq!(
        (wildcard.name.as_str(), wildcard.ttl),
        ("*.cdn.mysite.com.", 60)
    );
    let geo = &dns.geo[0];
    assert_eq!(geo.name, "api.mysite.com.");
    assert_eq!((geo.ttl, geo.answers), (30, 1));
    assert_eq!(geo.datacenters, ["us-east", "eu-west", "ap-southeast"]);
}

#[test]
fn the_example_configs_parse() {
    for text in [
        include_str!("../../config/geolb.toml"),
        include_str!("../../config/minimal.toml"),
        include_str!("../../config/docker.toml"),
    ] {
        parse(text).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn an_empty_file_is_an_empty_config() {
    let config = parse("").unwrap();
    assert_eq!(
        config,
        Config {
            source: PathBuf::from("/etc/geolb/geolb.toml"),
            text: None,
            runtime: RuntimeConfig::default(),
            log: LogConfig::default(),
            admin: None,
            geoip: None,
            dns: None,
            datacenters: vec![],
            pools: vec![],
            listeners: vec![],
            cluster: None,
        }
    );
}

#[test]
fn defaults_and_extensions() {
    let config = parse(
        r#"
        [runtime]
        worker_threads = 4
        shutdown_grace = "0s"
        [[pool]]
        name = "p"
        balance = "maglev"
        hash = "header:X-User"
        check = { kind = "https", host = "App.Example.com" }
        backends = [{ addr = "[::1]:8080" }]
        [[listener]]
        name = "l"
        bind = "[::]:0"
        pool = "p"
        access_log = true
        accept_proxy_protocol = true
        [[datacenter]]
        name = "dc"
        location = { lat = -33, lon = 151.2 }
        addresses = ["192.0.2.1"]
        check = { kind = "https", url = "HTTPS://Status.Example.com?q=1", expect = [200, 204] }
        [dns]
        listen = ["127.0.0.1:0", "[::1]:0"]
        [[dns.zone]]
        origin = "Example.COM."
        soa = { mname = "ns1", rname = "hostmaster", serial = 0, refresh = "1h", retry = "10m", expire = "14d", minimum = "0s" }
        ns = ["ns1", "ns.other.net."]
        file = "zones/example.com.zone"
        records = [
          { name = "*.WILD", type = "a", value = "192.0.2.9", ttl = 5 },
          { name = "_sip._udp", type = "SRV", value = "10 5 5060 sip" },
          { name = "@", type = "CAA", value = "0 issue \"letsencrypt.org\"" },
          { name = "@", type = "NS", value = "ns3.other.net." },
        ]
        [[dns.zone]]
        origin = "example.net"
        soa = { mname = "ns1", rname = "hostmaster", serial = 0, refresh = "1h", retry = "10m", expire = "14d", minimum = "0s" }
        ns = ["ns1.example.com."]
        [[dns.geo]]
        name = "example.net"
        [[dns.geo]]
        name = "www.example.com"
        ttl = 0
        "#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.runtime.worker_threads, Some(4));
    assert_eq!(config.runtime.shutdown_grace, Duration::ZERO);
    let pool = &config.pools[0];
    assert_eq!(pool.hash, HashKey::Header("x-user".into()));
    assert_eq!(
        pool.check.as_ref().unwrap().probe,
        Probe::Http(HttpProbe {
            tls: true,
            path: "/".into(),
            host: Some("app.example.com".into()),
            expect: vec![200],
            ca: None,
            verify: true,
        })
    );
    let listener = &config.listeners[0];
    assert!(listener.access_log && listener.accept_proxy_protocol);
    assert_eq!(listener.bind, "[::]:0".parse().unwrap());
    let remote = config.datacenters[0].check.as_ref().unwrap();
    assert_eq!(remote.target, "status.example.com:443");
    assert_eq!(
        remote.check.probe,
        Probe::Http(HttpProbe {
            tls: true,
            path: "/?q=1".into(),
            host: Some("status.example.com".into()),
            expect: vec![200, 204],
            ca: None,
            verify: true,
        })
    );
    let dns = config.dns.unwrap();
    let zone = &dns.zones[0];
    assert_eq!(zone.origin, "example.com.");
    assert_eq!(zone.ttl, 3600);
    assert_eq!(zone.soa.mname, "ns1.example.com.");
    assert_eq!(zone.soa.rname, "hostmaster.example.com.");
    assert_eq!(zone.ns, ["ns1.example.com.", "ns.other.net."]);
    assert_eq!(
        zone.file,
        Some(PathBuf::from("/etc/geolb/zones/example.com.zone"))
    );
    assert_eq!(zone.records[0].name, "*.wild.example.com.");
    assert_eq!(zone.records[0].ttl, 5);
    assert_eq!(
        zone.records[1].data,
        RecordData::Srv {
            priority: 10,
            weight: 5,
            port: 5060,
            target: "sip.example.com.".into()
        }
    );
    assert_eq!(
        zone.records[2].data,
        RecordData::Caa {
            flags: 0,
            tag: "issue".into(),
            value: "letsencrypt.org".into()
        }
    );
    assert_eq!(dns.geo[0].name, "example.net.");
    assert_eq!(dns.geo[0].datacenters, ["dc"]);
    assert_eq!((dns.geo[1].ttl, dns.geo[1].answers), (0, 1));
}

#[test]
fn dns_limits_defaults_and_values() {
    let dns = |keys: &str| {
        let text = format!("[dns]\nlisten = [\"127.0.0.1:5353\"]\n{keys}");
        parse_str(&text, Path::new("/tmp/geolb.toml"))
            .unwrap()
            .dns
            .unwrap()
    };
    let plain = dns("");
    assert_eq!(
        (plain.rrl, plain.tcp, plain.cookie_secret),
        (RrlConfig::default(), DnsTcpConfig::default(), None)
    );
    // NSID, id.server and hostname.bind give the host name; version.bind
    // nothing.
    assert_eq!(plain.nsid, Identity::HostName);
    assert_eq!(
        plain.chaos,
        ChaosConfig {
            id_server: Identity::HostName,
            hostname_bind: Identity::HostName,
            version_bind: Identity::Off,
        }
    );
    let named = dns(
        "nsid = { hex = \"00FF10\" }\n[dns.chaos]\nid_server = false\n\
         hostname_bind = \"ns1.fra\"\nversion_bind = true",
    );
    assert_eq!(named.nsid, Identity::Text(vec![0, 0xff, 0x10]));
    assert_eq!(
        named.chaos,
        ChaosConfig {
            id_server: Identity::Off,
            hostname_bind: Identity::Text(b"ns1.fra".to_vec()),
            version_bind: Identity::Version,
        }
    );
    assert_eq!(dns("nsid = false").nsid, Identity::Off);
    assert_eq!(plain.rrl.responses_per_second, 1000);
    assert_eq!(
        (
            plain.rrl.slip,
            plain.rrl.ipv4_prefix_length,
            plain.rrl.ipv6_prefix_length
        ),
        (2, 24, 56)
    );
    assert_eq!(
        (
            plain.tcp.max_connections,
            plain.tcp.idle_timeout,
            plain.tcp.max_queries
        ),
        (1000, Duration::from_secs(10), 0)
    );
    let set = dns(
        "cookie_secret = \"000102030405060708090A0B0C0D0E0F\"\ntcp_max_connections = 5\n\
         tcp_idle_timeout = \"2s\"\ntcp_max_queries = 100\n\
         [dns.rrl]\nresponses_per_second = 0\nslip = 0\nipv4_prefix_length = 32\nipv6_prefix_length = 64",
    );
    assert_eq!(set.cookie_secret, Some(std::array::from_fn(|i| i as u8)));
    assert_eq!(
        set.tcp,
        DnsTcpConfig {
            max_connections: 5,
            idle_timeout: Duration::from_secs(2),
            max_queries: 100
        }
    );
    assert_eq!(
        set.rrl,
        RrlConfig {
            responses_per_second: 0,
            slip: 0,
            ipv4_prefix_length: 32,
            ipv6_prefix_length: 64
        }
    );
}

/// Each case: a config, then the key path and line of one error it must report.
#[test]
fn each_mistake_is_reported_with_its_key_path_and_line() {
    const POOL: &str = "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:8080\" }]\n";
    const PROXY_POOL: &str = "[[pool]]\nname = \"pp\"\nproxy_protocol = \"v1\"\nbackends = [{ addr = \"127.0.0.1:5432\" }]\n";
    const DC: &str = "[[datacenter]]\nname = \"eu\"\nlocation = { lat = 1, lon = 2 }\naddresses = [\"192.0.2.1\"]\n";
    const ZONE: &str = "[dns]\nlisten = [\"127.0.0.1:5353\"]\n[[dns.zone]]\norigin = \"mysite.com\"\n\
        soa = { mname = \"ns1\", rname = \"hostmaster\", serial = 1, refresh = \"1h\", retry = \"10m\", expire = \"14d\", minimum = \"60s\" }\n\
        ns = [\"ns1\"]\n";
    const DNS: &str = "[dns]\nlisten = [\"127.0.0.1:5353\"]\n";
    let cases: Vec<(String, &str, usize)> = vec![
        ("[admin]\nlisten = \"127.0.0.1\"".into(), "admin.listen", 2),
        ("admin = 5".into(), "admin", 1),
        (
            "[admin]\nlisten = \"127.0.0.1:1\"\ntls = [{ cert = \"c.pem\" }]".into(),
            "admin.tls[0].key",
            3,
        ),
        ("[admin]\nlisten = \"127.0.0.1:1\"\ntls = []".into(), "admin.tls", 3),
        ("[admin]\nlisten = \"127.0.0.1:1\"\nsocket = \"\"".into(), "admin.socket", 3),
        (
            format!("[admin]\nlisten = \"127.0.0.1:1\"\nsocket = \"/{}\"", "s".repeat(107)),
            "admin.socket",
            3,
        ),
        ("[admin]\nlisten = \"127.0.0.1:1\"\nsocket_mode = \"999\"".into(), "admin.socket_mode", 3),
        ("[admin]\nlisten = \"127.0.0.1:1\"\nsocket_mode = \"01777\"".into(), "admin.socket_mode", 3),
        ("[admin]\nlisten = \"127.0.0.1:1\"\nsocket_mode = \"0460\"".into(), "admin.socket_mode", 3),
        ("[admin]\nlisten = \"127.0.0.1:1\"\nsocket_mode = 600".into(), "admin.socket_mode", 3),
        ("\n[pools]\n".into(), "pools", 2),
        ("[runtime]\nworker_threads = 0".into(), "runtime.worker_threads", 2),
        ("[runtime]\n\nshutdown_grace = \"30\"".into(), "runtime.shutdown_grace", 3),
        ("[runtime]\nhuge_pages = \"yes\"".into(), "runtime.huge_pages", 2),
        (
            "[[geoip.network]]\ncidr = \"10.0.0.1/8\"\nlocation = { lat = 1, lon = 2 }".into(),
            "geoip.network[0].cidr",
            2,
        ),
        (
            "[[geoip.network]]\ncidr = \"10.0.0.0/8\"\nlocation = { lat = 91, lon = 2 }".into(),
            "geoip.network[0].location.lat",
            3,
        ),
        ("[geoip]\n[[geoip.network]]\ncidr = \"10.0.0.0/8\"".into(), "geoip.network[0].location", 2),
        (
            "[[pool]]\nname = \"p\"\nbackends = [\n  { addr = \"127.0.0.1\" },\n]".into(),
            "pool[0].backends[0].addr",
            4,
        ),
        ("[[pool]]\nname = \"p\"".into(), "pool[0].backends", 1),
        (format!("{POOL}{POOL}"), "pool[1].name", 5),
        (format!("{POOL}balance = \"fastest\""), "pool[0].balance", 4),
        (format!("{POOL}hash = \"header:\""), "pool[0].hash", 4),
        (format!("{POOL}min_healthy = 2"), "pool[0].min_healthy", 4),
        (format!("{POOL}\ncheck = {{ path = \"/\" }}"), "pool[0].check.kind", 5),
        (format!("{POOL}check = {{ kind = \"tcp\", path = \"/\" }}"), "pool[0].check.path", 4),
        (format!("{POOL}check = {{ kind = \"http\", expect = 600 }}"), "pool[0].check.expect", 4),
        (
            "[[pool]]\nname = \"p\"\nbackends = [\n{ addr = \"127.0.0.1:1\" },\n{ addr = \"127.0.0.1:1\" }]".into(),
            "pool[0].backends[1].addr",
            5,
        ),
        (
            "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\", weight = 0 }]".into(),
            "pool[0].backends[0].weight",
            3,
        ),
        (format!("{POOL}proxy_protocol = \"v3\""), "pool[0].proxy_protocol", 4),
        (format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"q\""), "listener[0].pool", 7),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nprotocol = \"https\""),
            "listener[0].tls",
            4,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\ntls = [{{ cert = \"c\", key = \"k\" }}]"),
            "listener[0].tls",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nprotocol = \"tcp\"\nroutes = [{{ host = \"a.com\", pool = \"p\" }}]"),
            "listener[0].routes",
            9,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\ntimeouts = {{ connect = \"0s\" }}"),
            "listener[0].timeouts.connect",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nretries = 101"),
            "listener[0].retries",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nmax_connections = 0"),
            "listener[0].max_connections",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nmax_connections = 1000001"),
            "listener[0].max_connections",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nclient_limits = {{}}"),
            "listener[0].client_limits",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nclient_limits = 5"),
            "listener[0].client_limits",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nclient_limits = {{ max_connections = 0 }}"),
            "listener[0].client_limits.max_connections",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nclient_limits = {{ requests_per_second = 0 }}"),
            "listener[0].client_limits.requests_per_second",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nclient_limits = {{ requests_per_second = 1, burst = 0 }}"),
            "listener[0].client_limits.burst",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nclient_limits = {{ max_connections = 1, burst = 5 }}"),
            "listener[0].client_limits.burst",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nclient_limits = {{ max_connections = 1, ipv4_prefix = 33 }}"),
            "listener[0].client_limits.ipv4_prefix",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nclient_limits = {{ max_connections = 1, ipv6_prefix = 129 }}"),
            "listener[0].client_limits.ipv6_prefix",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nclient_limits = {{ max_connections = 1, per_second = 5 }}"),
            "listener[0].client_limits.per_second",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nprotocol = \"tcp\"\nclient_limits = {{ requests_per_second = 5 }}"),
            "listener[0].client_limits.requests_per_second",
            9,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nmax_concurrent_streams = 0"),
            "listener[0].max_concurrent_streams",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nmax_concurrent_streams = 10001"),
            "listener[0].max_concurrent_streams",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nprotocol = \"tcp\"\nmax_concurrent_streams = 10"),
            "listener[0].max_concurrent_streams",
            9,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:443\"\npool = \"p\"\nprotocol = \"https\"\ntls = [{{ cert = \"c.pem\", key = \"k.pem\" }}]\nsplice = false"),
            "listener[0].splice",
            10,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nprotocol = \"tcp\"\nsplice = \"yes\""),
            "listener[0].splice",
            9,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nroutes = [{{ path_prefix = \"/%70ublic/\", pool = \"p\" }}]"),
            "listener[0].routes[0].path_prefix",
            8,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\n[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:80\"\npool = \"p\""),
            "listener[1].bind",
            10,
        ),
        (
            format!("{PROXY_POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"pp\""),
            "listener[0].pool",
            8,
        ),
        (
            "[dns]\nlisten = [\"127.0.0.1:5353\"]\nudp_threads = 0".into(),
            "dns.udp_threads",
            3,
        ),
        (format!("{DNS}[dns.rrl]\nslip = 101"), "dns.rrl.slip", 4),
        (format!("{DNS}[dns.rrl]\nresponses_per_second = -1"), "dns.rrl.responses_per_second", 4),
        (format!("{DNS}[dns.rrl]\nipv4_prefix_length = 33"), "dns.rrl.ipv4_prefix_length", 4),
        (format!("{DNS}[dns.rrl]\nipv6_prefix_length = 0"), "dns.rrl.ipv6_prefix_length", 4),
        (format!("{DNS}[dns.rrl]\nrate = 5"), "dns.rrl.rate", 4),
        (format!("{DNS}rrl = 5"), "dns.rrl", 3),
        (format!("{DNS}cookie_secret = \"00112233\""), "dns.cookie_secret", 3),
        (format!("{DNS}cookie_secret = \"{}\"", "g".repeat(32)), "dns.cookie_secret", 3),
        (format!("{DNS}ixfr_versions = 0"), "dns.ixfr_versions", 3),
        (format!("{ZONE}transfer = {{ allow = [\"10.0.0.1\"] }}"), "dns.zone[0].transfer.allow[0]", 7),
        (format!("{ZONE}transfer = {{ allow = [] }}"), "dns.zone[0].transfer.allow", 7),
        (format!("{ZONE}transfer = {{ allow = [\"10.0.0.0/8\"], key = \"k\" }}"), "dns.zone[0].transfer.key", 7),
        (format!("{ZONE}transfer = {{ key = \"k\" }}"), "dns.zone[0].transfer.allow", 7),
        (format!("{ZONE}notify = [\"127.0.0.1:53\"]"), "dns.zone[0].notify", 7),
        (format!("{ZONE}transfer = {{ allow = [\"10.0.0.0/8\"] }}\nnotify = [\"127.0.0.1\"]"), "dns.zone[0].notify[0]", 8),
        (format!("{DNS}[[dns.tsig]]\nname = \"k\"\nsecret = \"not base64!\""), "dns.tsig[0].secret", 5),
        (format!("{DNS}[[dns.tsig]]\nname = \"k\"\nalgorithm = \"hmac-md5\"\nsecret = \"AAAA\""), "dns.tsig[0].algorithm", 5),
        (format!("{DNS}[[dns.tsig]]\nname = \"k\"\nsecret = \"AAAA\"\nsecret_file = \"k.b64\""), "dns.tsig[0].secret_file", 6),
        (format!("{DNS}[[dns.tsig]]\nname = \"k\""), "dns.tsig[0].secret", 3),
        (format!("{DNS}[[dns.tsig]]\nname = \"k\"\nsecret = \"AAAA\"\n[[dns.tsig]]\nname = \"K.\"\nsecret = \"AAAA\""), "dns.tsig[1].name", 7),
        (format!("{DNS}tcp_max_connections = 0"), "dns.tcp_max_connections", 3),
        (format!("{DNS}tcp_idle_timeout = 10"), "dns.tcp_idle_timeout", 3),
        (format!("{DNS}tcp_idle_timeout = \"0s\""), "dns.tcp_idle_timeout", 3),
        (format!("{DNS}tcp_max_queries = -1"), "dns.tcp_max_queries", 3),
        (format!("{DNS}nsid = \"\""), "dns.nsid", 3),
        (format!("{DNS}nsid = 5"), "dns.nsid", 3),
        (format!("{DNS}nsid = {{ hex = \"abc\" }}"), "dns.nsid.hex", 3),
        (format!("{DNS}nsid = {{ text = \"a\" }}"), "dns.nsid.text", 3),
        (format!("{DNS}nsid = \"{}\"", "n".repeat(256)), "dns.nsid", 3),
        (format!("{DNS}[dns.chaos]\nid_server = {{ hex = \"00\" }}"), "dns.chaos.id_server", 4),
        (format!("{DNS}[dns.chaos]\nversion_bind = \"\""), "dns.chaos.version_bind", 4),
        (format!("{DNS}[dns.chaos]\nversion = true"), "dns.chaos.version", 4),
        (format!("{POOL}backend_protocol = \"h3\""), "pool[0].backend_protocol", 4),
        (format!("{POOL}backend_protocol = \"h2\""), "pool[0].backend_protocol", 4),
        (
            format!("{POOL}tls = true\nbackend_protocol = \"h2c\""),
            "pool[0].backend_protocol",
            5,
        ),
        (format!("{POOL}tls = \"yes\""), "pool[0].tls", 4),
        (format!("{POOL}tls = {{ cafile = \"ca.pem\" }}"), "pool[0].tls.cafile", 4),
        (format!("{POOL}tls = {{ sni = \"a b\" }}"), "pool[0].tls.sni", 4),
        (
            format!("{POOL}tls = true\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\nprotocol = \"tcp\"\npool = \"p\""),
            "listener[0].pool",
            9,
        ),
        (
            format!("{POOL}{PROXY_POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nroutes = [\n{{ path_prefix = \"/db/\", pool = \"pp\" }}]"),
            "listener[0].routes[0].pool",
            13,
        ),
        (
            format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nroutes = [{{ path_prefix = \"us/\", pool = \"p\" }}]"),
            "listener[0].routes[0].path_prefix",
            8,
        ),
        (format!("{DC}check = {{ kind = \"ftp\" }}"), "datacenter[0].check.kind", 5),
        (format!("{DC}check = {{ kind = \"tcp\", url = \"http://192.0.2.1/\" }}"), "datacenter[0].check.url", 5),
        (format!("{DC}check = {{ kind = \"https\", url = \"http://192.0.2.1/\" }}"), "datacenter[0].check.url", 5),
        (format!("{DC}pools = [\"nope\"]"), "datacenter[0].pools[0]", 5),
        (format!("{DC}{DC}"), "datacenter[1].name", 6),
        ("[[datacenter]]\nname = \"eu\"\nlocation = { lat = 1, lon = 2 }\naddresses = []".into(), "datacenter[0].addresses", 4),
        ("[dns]\nlisten = []".into(), "dns.listen", 2),
        ("[dns]\n".into(), "dns.listen", 1),
        (format!("{ZONE}records = [\n{{ name = \"www\", type = \"A\", value = \"192.0.2.300\" }}]"), "dns.zone[0].records[0].value", 8),
        (format!("{ZONE}records = [\n{{ name = \"@\", type = \"SOA\", value = \"x\" }}]"), "dns.zone[0].records[0].type", 8),
        (
            format!("{ZONE}records = [\n{{ name = \"www\", type = \"CNAME\", value = \"api\" }},\n{{ name = \"www\", type = \"TXT\", value = \"x\" }}]"),
            "dns.zone[0].records[1]",
            9,
        ),
        (format!("{ZONE}records = [{{ name = \"x.other.com.\", type = \"A\", value = \"192.0.2.1\" }}]"), "dns.zone[0].records[0].name", 7),
        (format!("{ZONE}ttl = -1"), "dns.zone[0].ttl", 7),
        (
            format!("{ZONE}records = [\n{{ name = \"@\", type = \"TXT\", value = \"a\" }},\n{{ name = \"@\", type = \"TXT\", value = \"b\", ttl = 5 }}]"),
            "dns.zone[0].records[1]",
            9,
        ),
        (
            format!("{ZONE}records = [\n{{ name = \"@\", type = \"TXT\", value = \"a\" }},\n{{ name = \"@\", type = \"TXT\", value = \"a\" }}]"),
            "dns.zone[0].records[1]",
            9,
        ),
        (format!("{ZONE}records = [{{ name = \"@\", type = \"CNAME\", value = \"www\" }}]"), "dns.zone[0].records[0]", 7),
        (format!("{ZONE}records = [{{ name = \"sub\", type = \"NS\", value = \"ns.other.net.\" }}]"), "dns.zone[0].records[0]", 7),
        (
            format!(
                "{ZONE}records = [{{ name = \"a.sub\", type = \"A\", value = \"192.0.2.1\" }}]\n\
                 [[dns.zone]]\norigin = \"sub.mysite.com\"\nns = [\"ns1\"]\n\
                 soa = {{ mname = \"ns1\", rname = \"h\", serial = 1, refresh = \"1h\", retry = \"1h\", expire = \"1h\", minimum = \"1h\" }}"
            ),
            "dns.zone[0].records[0]",
            7,
        ),
        (
            ZONE.replace("serial = 1", "serial = -1"),
            "dns.zone[0].soa.serial",
            5,
        ),
        (format!("{ZONE}[[dns.zone]]\norigin = \"MYSITE.com.\""), "dns.zone[1].origin", 8),
        (
            format!("{ZONE}dnssec = {{ keys = [{{ file = \"k.pem\", role = \"boss\" }}] }}"),
            "dns.zone[0].dnssec.keys[0].role",
            7,
        ),
        (
            format!("{ZONE}dnssec = {{ keys = [{{ file = \"k.pem\", role = \"zsk\" }}] }}"),
            "dns.zone[0].dnssec.keys",
            7,
        ),
        (
            format!("{ZONE}dnssec = {{ keys = [{{ file = \"k.pem\", role = \"csk\" }}], validity = \"1d\", refresh = \"2d\" }}"),
            "dns.zone[0].dnssec.refresh",
            7,
        ),
        (
            format!("{ZONE}dnssec = {{ keys = [{{ file = \"k.pem\", role = \"csk\" }}, {{ file = \"k.pem\", role = \"zsk\" }}] }}"),
            "dns.zone[0].dnssec.keys[1].file",
            7,
        ),
        (format!("{DC}{ZONE}[[dns.geo]]\nname = \"api.other.com\""), "dns.geo[0].name", 12),
        (format!("{DC}{ZONE}[[dns.geo]]\nname = \"api.mysite.com\"\nanswers = 2"), "dns.geo[0].answers", 13),
        (format!("{DC}{ZONE}[[dns.geo]]\nname = \"api.mysite.com\"\ndatacenters = [\"eu\", \"us\"]"), "dns.geo[0].datacenters[1]", 13),
        (
            format!("{DC}{ZONE}records = [{{ name = \"api\", type = \"A\", value = \"192.0.2.1\" }}]\n[[dns.geo]]\nname = \"api.mysite.com\""),
            "dns.zone[0].records[0]",
            11,
        ),
    ];
    assert!(cases.len() >= 25);
    for (text, path, line) in &cases {
        let found = errors(text);
        assert!(
            found
                .iter()
                .any(|e| e.path == *path && e.line == Some(*line)),
            "expected an error at {path} on line {line} from:\n{text}\ngot:\n{}",
            ConfigErrors(found.clone())
        );
    }
}

#[test]
fn every_mistake_in_one_file_is_reported_in_line_order() {
    let text = r#"
[runtime]
worker_threads = 0
[admin]
listen = "localhost:9100"
[[pool]]
name = "web"
balance = "roundrobin"
backends = [{ addr = "127.0.0.1" }, { addr = "127.0.0.1:8081", weight = 0 }]
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
pool = "wbe"
timeouts = { connect = "5" }
"#;
    let found = errors(text);
    let got: Vec<(&str, Option<usize>)> = found.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        got,
        [
            ("runtime.worker_threads", Some(3)),
            ("admin.listen", Some(5)),
            ("pool[0].balance", Some(8)),
            ("pool[0].backends[0].addr", Some(9)),
            ("pool[0].backends[1].weight", Some(9)),
            ("listener[0].pool", Some(13)),
            ("listener[0].timeouts.connect", Some(14)),
        ]
    );
    assert!(
        found[2].message.contains("did you mean \"round_robin\""),
        "{}",
        found[2]
    );
    assert!(
        found[5].message.contains("did you mean \"web\""),
        "{}",
        found[5]
    );
}

#[test]
fn messages_show_the_value_and_what_is_accepted() {
    let found = errors("[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1\" }]");
    assert_eq!(
        found[0].to_string(),
        "line 3: pool[0].backends[0].addr = \"127.0.0.1\": expected an IP address and port like \
         \"127.0.0.1:8080\" (the port is missing)"
    );
    let found = errors("[[pool]]\nname = \"p\"\nbackends = [{ addr = \"db.local:5432\" }]");
    assert!(
        found[0].message.contains("host names are not accepted"),
        "{}",
        found[0]
    );
    let found = errors("[admin]\nlisen = \"127.0.0.1:1\"");
    let texts: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            "line 1: admin.listen: required key is missing; add e.g. listen = \"127.0.0.1:9100\"",
            "line 2: admin.lisen: unknown key (did you mean listen?); accepted here: listen, token_file, tls, socket, socket_mode",
        ]
    );
    let syntax = errors("[admin\nlisten = 1");
    assert_eq!(syntax.len(), 1);
    assert_eq!((syntax[0].path.as_str(), syntax[0].line), ("", Some(1)));
    assert!(
        syntax[0]
            .to_string()
            .starts_with("line 1: TOML syntax error"),
        "{}",
        syntax[0]
    );
    let all = ConfigErrors(vec![
        ConfigError {
            path: "a".into(),
            message: "= 1: bad".into(),
            line: Some(2),
        },
        ConfigError {
            path: String::new(),
            message: "cannot read x".into(),
            line: None,
        },
    ]);
    assert_eq!(all.to_string(), "line 2: a = 1: bad\ncannot read x");
}

#[test]
fn durations() {
    let ok = [
        ("250ms", Duration::from_millis(250)),
        ("2s", Duration::from_secs(2)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
        ("14d", Duration::from_secs(14 * 86400)),
        ("0s", Duration::ZERO),
        ("4294967295s", Duration::from_secs(u32::MAX.into())),
    ];
    for (text, want) in ok {
        assert_eq!(parse_duration(text), Ok(want), "{text}");
    }
    for text in [
        "",
        "2",
        "2 s",
        " 2s",
        "-2s",
        "+2s",
        "1.5s",
        "2sec",
        "s",
        "2S",
        "4294967296s",
        "99999999999999999999999d",
    ] {
        assert!(parse_duration(text).is_err(), "{text}");
    }
    let found = errors(
        "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\ncheck = { kind = \"tcp\", interval = 2, timeout = \"0ms\" }",
    );
    let paths: Vec<&str> = found.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["pool[0].check.interval", "pool[0].check.timeout"]);
    assert!(found[0].message.contains("write \"2s\""), "{}", found[0]);
    let found = errors(&REFERENCE.replace("minimum = \"60s\"", "minimum = \"1500ms\""));
    assert_eq!(found[0].path, "dns.zone[0].soa.minimum");
}

#[test]
fn bad_input_never_panics() {
    let mut inputs: Vec<String> = REFERENCE
        .char_indices()
        .map(|(i, _)| REFERENCE[..i].to_owned())
        .step_by(7)
        .collect();
    let lines: Vec<&str> = REFERENCE.lines().collect();
    for skip in 0..lines.len() {
        let mut without = lines.clone();
        without.remove(skip);
        inputs.push(without.join("\n"));
    }
    inputs.extend(
        [
            "pool = [[]]",
            "pool = [1, 2]",
            "[[pool]]\nname = 1\nbackends = {}",
            "[[pool]]\nbackends = [[], {}, { addr = 1 }]\nmin_healthy = -1\ncheck = []",
            "[dns]\nlisten = \"127.0.0.1:53\"\nzone = [{ soa = [], ns = [1], records = [{}] }]\ngeo = 5",
            "[[dns.zone]]\norigin = \"@\"\nrecords = [{ name = \"@\", type = \"CNAME\", value = \"@\" }]",
            "[[dns.geo]]\nname = \"a.\"\nanswers = 99999999999999999999999\ndatacenters = []",
            "[[datacenter]]\nlocation = 1970-01-01T00:00:00Z\naddresses = [1.5]\ncheck = { kind = \"http\" }",
            "[[listener]]\nprotocol = \"https\"\ntls = [{ cert = \"\" }]\nroutes = [{}, 1]\ntimeouts = []",
            "[geoip]\nnetwork = { cidr = \"x\" }\ndatabase = 1",
            "[runtime]\nworker_threads = 1e400\nshutdown_grace = \"18446744073709551615d\"",
            "a.b.c.d.e = 1\n\"\u{7f}é\" = \"\u{0}\"",
        ]
        .map(str::to_owned),
    );
    let deep = format!("[admin]\nlisten = {}1{}", "[".repeat(60), "]".repeat(60));
    inputs.push(deep);
    for input in &inputs {
        check_errors(input);
    }
}

/// Parses `input`: no panic, and every error says what is wrong and where
/// (a key path or a line).
fn check_errors(input: &str) {
    let outcome = std::panic::catch_unwind(|| parse(input));
    let Ok(result) = outcome else {
        panic!("parse panicked on:\n{input}");
    };
    if let Err(ConfigErrors(errors)) = result {
        assert!(!errors.is_empty(), "an empty error list for:\n{input}");
        for e in &errors {
            assert!(!e.message.trim().is_empty(), "{e:?} from:\n{input}");
            assert!(
                !e.path.is_empty() || e.line.is_some(),
                "{e:?} has neither a key path nor a line, from:\n{input}"
            );
        }
    }
}

/// One damaged config: lines deleted, duplicated or truncated, values
/// swapped between keys, text inserted, numbers made huge, values nested
/// deep.
fn mutate_config(rng: &mut fastrand::Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for _ in 0..rng.usize(1..5) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let i = rng.usize(0..lines.len());
        match rng.u8(0..9) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let line = lines[i].clone();
                lines.insert(rng.usize(0..=lines.len()), line);
            }
            2 => {
                // Swap the values of two `key = value` lines.
                let j = rng.usize(0..lines.len());
                if let (Some((ka, va)), Some((kb, vb))) =
                    (lines[i].split_once('='), lines[j].split_once('='))
                {
                    let (a, b) = (format!("{ka}={vb}"), format!("{kb}={va}"));
                    (lines[i], lines[j]) = (a, b);
                }
            }
            3 => {
                // Random UTF-8 (any char) somewhere in a line.
                let at = lines[i]
                    .char_indices()
                    .map(|(k, _)| k)
                    .nth(rng.usize(0..=lines[i].chars().count()));
                let at = at.unwrap_or(lines[i].len());
                let c = if rng.bool() {
                    rng.char(..)
                } else {
                    *rng.choice(&[
                        '"', '\'', '[', ']', '{', '}', '=', ',', '.', '#', '\\', '\n', '\0',
                    ])
                    .unwrap()
                };
                lines[i].insert(at, c);
            }
            4 => {
                // Truncate the line at a char boundary.
                let cut = lines[i]
                    .char_indices()
                    .map(|(k, _)| k)
                    .nth(rng.usize(0..=lines[i].chars().count()));
                if let Some(cut) = cut {
                    lines[i].truncate(cut);
                }
            }
            5 => {
                // A number made huge, negative or fractional.
                if let Some((k, _)) = lines[i].split_once('=') {
                    let v = *rng
                        .choice(&[
                            "99999999999999999999999999",
                            "18446744073709551616",
                            "-9223372036854775808",
                            "4294967296",
                            "65536",
                            "-1",
                            "0",
                            "1e308",
                            "inf",
                            "nan",
                            "0.5",
                            "\"99999999999999999999999s\"",
                            "\"18446744073709551615d\"",
                        ])
                        .unwrap();
                    lines[i] = format!("{k}= {v}");
                }
            }
            6 => {
                // A value nested deep in arrays or inline tables.
                if let Some((k, _)) = lines[i].split_once('=') {
                    let depth = rng.usize(1..200);
                    lines[i] = if rng.bool() {
                        format!("{k}= {}1{}", "[".repeat(depth), "]".repeat(depth))
                    } else {
                        format!("{k}= {}1{}", "{ a = ".repeat(depth), " }".repeat(depth))
                    };
                }
            }
            7 => {
                // A line from elsewhere in the file, in place of this one.
                let j = rng.usize(0..lines.len());
                lines[i] = lines[j].clone();
            }
            _ => {
                // Two lines swapped: a key under another table.
                let j = rng.usize(0..lines.len());
                lines.swap(i, j);
            }
        }
    }
    lines.join("\n")
}

/// The property test (README "Tests"): damaged versions of the shipped
/// configs, and of each cut short, never panic and every error says what
/// and where.
#[test]
fn proptest_parse_str() {
    let sources = [REFERENCE, include_str!("../../config/geolb.toml")];
    let cases = crate::proptest_cases(20_000);
    let seed = 0x636f_6e66_6967_5f31u64;
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = std::time::Instant::now();
    for i in 0..cases {
        // The whole reference is slow to parse in debug: a quarter of the
        // inputs take all of it, a quarter a run of its sections, half the
        // (smaller) example config.
        let source = match rng.u8(0..4) {
            0 => REFERENCE.to_owned(),
            1 => {
                let tables: Vec<usize> =
                    REFERENCE.match_indices("\n[").map(|(k, _)| k + 1).collect();
                let start = *rng.choice(&tables).unwrap();
                let end = tables.get(tables.partition_point(|&k| k <= start) + rng.usize(0..4));
                REFERENCE[start..end.copied().unwrap_or(REFERENCE.len())].to_owned()
            }
            _ => sources[1].to_owned(),
        };
        let mut text = mutate_config(&mut rng, &source);
        if rng.u8(0..4) == 0 {
            // Cut short anywhere, on a char boundary.
            let mut cut = rng.usize(0..=text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let outcome = std::panic::catch_unwind(|| check_errors(&text));
        if outcome.is_err() {
            panic!("input {i} (seed {seed:#x}) failed, see above");
        }
    }
    eprintln!(
        "proptest_parse_str: {cases} inputs in {:?}",
        started.elapsed()
    );
}

#[test]
fn check_files_names_each_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
    std::fs::create_dir(dir.path().join("geo.mmdb")).unwrap();
    let text = r#"[geoip]
database = "geo.mmdb"
[[pool]]
name = "p"
backends = [{ addr = "127.0.0.1:1" }]
[[listener]]
name = "l"
bind = "127.0.0.1:0"
pool = "p"
protocol = "https"
tls = [
  { cert = "cert.pem", key = "missing.key" },
]
"#;
    let path = dir.path().join("geolb.toml");
    std::fs::write(&path, text).unwrap();
    let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.source, path);
    let found = check_files(&config);
    let got: Vec<(&str, Option<usize>)> = found.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        got,
        [
            ("geoip.database", Some(2)),
            ("listener[0].tls[0].key", Some(12))
        ]
    );
    assert!(
        found[0].message.contains("not a regular file"),
        "{}",
        found[0]
    );
    assert!(found[1].message.contains("missing.key"), "{}", found[1]);

    let missing = load(&dir.path().join("nope.toml")).unwrap_err();
    assert_eq!(missing.0.len(), 1);
    assert_eq!((missing.0[0].path.as_str(), missing.0[0].line), ("", None));
    assert!(
        missing.0[0].message.starts_with("cannot read "),
        "{missing}"
    );
}

/// The key paths (array indexes as `[]`) the walk asked for while reading
/// `text`, each with whether `text` set it anywhere.
fn looked_up(text: &str) -> BTreeMap<String, bool> {
    let (_, mut ctx) =
        read_document(text, Path::new(REFERENCE_PATH)).unwrap_or_else(|e| panic!("{e}"));
    let keys = std::mem::take(&mut ctx.looked_up);
    let errors = ctx.into_errors();
    assert!(errors.is_empty(), "{}", ConfigErrors(errors));
    keys
}

/// A key the parser reads but the reference leaves out fails here, so the
/// reference cannot fall behind the parser.
#[test]
fn the_reference_sets_every_key_the_parser_reads() {
    let mut asked = looked_up(REFERENCE);
    // Tables the reference might not enter still get their keys asked for.
    for example in [
        include_str!("../../config/geolb.toml"),
        include_str!("../../config/minimal.toml"),
        include_str!("../../config/docker.toml"),
    ] {
        asked.extend(looked_up(example).into_keys().map(|key| (key, false)));
    }
    let reference = looked_up(REFERENCE);
    let unset: Vec<&str> = asked
        .keys()
        .filter(|key| reference.get(*key) != Some(&true))
        .map(String::as_str)
        .collect();
    assert!(
        unset.is_empty(),
        "config/reference.toml does not set: {}",
        unset.join(", ")
    );
    // Keys of tables only some forms of a value open, and of each check kind.
    for key in [
        "pool[].tls.sni",
        "pool[].check.ca",
        "pool[].check.host",
        "datacenter[].check.url",
        "datacenter[].check.addr",
        "datacenter[].check.verify",
        "dns.zone[].file",
        "dns.zone[].records[].ttl",
        "listener[].tls[].key",
        "admin.tls[].key",
        "listener[].routes[].path_prefix",
        "geoip.network[].location.lon",
    ] {
        assert_eq!(reference.get(key), Some(&true), "{key}");
    }
}

/// The outside contract's config, where a checkout has it beside the
/// repository: everything in it is accepted, and the reference sets every
/// key it sets. Nothing else depends on that file.
#[test]
fn the_reference_covers_the_contract_file_when_present() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/contract/geolb.toml");
    let Ok(contract) = std::fs::read_to_string(&path) else {
        return;
    };
    let reference = looked_up(REFERENCE);
    let missing: Vec<String> = looked_up(&contract)
        .into_iter()
        .filter(|(key, set)| *set && reference.get(key) != Some(&true))
        .map(|(key, _)| key)
        .collect();
    assert!(
        missing.is_empty(),
        "set in {} but not in config/reference.toml: {}",
        path.display(),
        missing.join(", ")
    );
}

#[test]
fn a_data_center_nothing_checks_is_a_warning_unless_always_up() {
    const DC: &str = "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n\
        [[datacenter]]\nname = \"eu\"\nlocation = { lat = 1, lon = 2 }\naddresses = [\"192.0.2.1\"]\n";
    let nothing = ConfigError {
        path: "datacenter[0]".into(),
        message: "a data center with no pools and no check is up whatever happens to it; \
                  add pools = [\"web\"] (its local pools), a check (a remote one), or \
                  always_up = true if that is meant"
            .into(),
        line: Some(4),
    };
    // Valid (a GeoDNS-only data center), but said.
    for unchecked in [DC.to_owned(), format!("{DC}pools = []")] {
        let config = parse(&unchecked).unwrap_or_else(|e| panic!("{e}"));
        let said: Vec<(String, String)> = warnings(&config)
            .into_iter()
            .map(|w| (w.path, w.message))
            .collect();
        assert_eq!(
            said,
            [(nothing.path.clone(), nothing.message.clone())],
            "{unchecked}"
        );
    }
    assert_eq!(
        errors(&format!("{DC}always_up = false")),
        [ConfigError {
            path: "datacenter[0].always_up".into(),
            message: format!("= false: {}", nothing.message),
            line: Some(8),
        }]
    );
    assert_eq!(
        errors(&format!("{DC}pools = [\"p\"]\nalways_up = true")),
        [ConfigError {
            path: "datacenter[0].always_up".into(),
            message: "= true: the pools or check set here would be ignored; remove them, or \
                      this key"
                .into(),
            line: Some(9),
        }]
    );
    // A bad pools list is reported alone, not also as "no pools".
    let found = errors(&format!("{DC}pools = [\"q\"]"));
    let paths: Vec<&str> = found.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["datacenter[0].pools[0]"]);

    let up = parse(&format!("{DC}always_up = true")).unwrap_or_else(|e| panic!("{e}"));
    assert!(up.datacenters[0].always_up);
    assert!(warnings(&up).is_empty());
    for fine in [
        format!("{DC}pools = [\"p\"]"),
        format!("{DC}check = {{ kind = \"tcp\", addr = \"192.0.2.1:9100\" }}"),
        format!("{DC}pools = [\"p\"]\nalways_up = false"),
    ] {
        let config = parse(&fine).unwrap_or_else(|e| panic!("{fine}: {e}"));
        assert!(!config.datacenters[0].always_up, "{fine}");
        assert!(warnings(&config).is_empty(), "{fine}");
    }
}

/// A name defined twice is one error: the second table never stands for
/// the name, so references to it are neither unknown nor judged by the
/// second table's settings.
#[test]
fn a_duplicate_name_is_reported_once() {
    let text = r#"[[pool]]
name = "web"
backends = []
[[pool]]
name = "web"
backends = [{ addr = "127.0.0.1:8082" }]
proxy_protocol = "v2"
[[datacenter]]
name = "eu"
location = { lat = 1, lon = 2 }
addresses = ["192.0.2.1"]
pools = ["web"]
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
pool = "web"
routes = [{ path_prefix = "/x/", pool = "web" }]
"#;
    assert_eq!(
        errors(text),
        [
            ConfigError {
                path: "pool[0].backends".into(),
                message:
                    "= []: a pool needs at least one backend, like [{ addr = \"127.0.0.1:8080\" }]"
                        .into(),
                line: Some(3),
            },
            ConfigError {
                path: "pool[1].name".into(),
                message: "= \"web\": duplicate name: pool[0].name is the same".into(),
                line: Some(5),
            },
        ]
    );
}

#[test]
fn admin_socket_modes_are_octal_strings() {
    let mode = |m: &str| {
        let text =
            format!("[admin]\nlisten = \"127.0.0.1:1\"\nsocket = \"a.sock\"\nsocket_mode = {m:?}");
        parse(&text).map(|c| c.admin.unwrap().socket_mode)
    };
    assert_eq!(mode("0660").unwrap(), 0o660);
    assert_eq!(mode("600").unwrap(), 0o600);
    assert_eq!(mode("0o640").unwrap(), 0o640);
    let e = mode("999").unwrap_err().to_string();
    assert!(
        e.contains("admin.socket_mode = \"999\": expected permission bits in octal"),
        "{e}"
    );
    let text = "[admin]\nlisten = \"127.0.0.1:1\"\nsocket = \"a.sock\"";
    let admin = parse(text).unwrap().admin.unwrap();
    assert_eq!(admin.socket_mode, 0o600, "the default");
    assert!(
        admin.socket.unwrap().is_absolute(),
        "resolved against the config's directory"
    );
}

#[test]
fn the_contracts_cluster_keys_parse_as_sketched() {
    // The contract's geolb.toml, [cluster] uncommented as it sketches it.
    let config = parse(
        r#"
        [cluster]
        etcd = ["http://127.0.0.1:2379", "http://127.0.0.1:22379", "http://127.0.0.1:32379"]
        prefix = "/geolb/"          # (optional, "/geolb/") every key geolb writes or reads is under it
        node = "eu-west-1"          # this node's unique name
        datacenter = "eu-west"      # (optional) the [[datacenter]] this node serves
        [[datacenter]]
        name = "eu-west"
        location = { lat = 53.35, lon = -6.26 }
        addresses = ["198.51.100.10"]
        always_up = true
        "#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cluster = config.cluster.unwrap();
    assert_eq!(cluster.etcd.len(), 3);
    assert_eq!(cluster.etcd[1], "http://127.0.0.1:22379");
    assert_eq!(cluster.prefix, "/geolb/");
    assert_eq!(cluster.node, "eu-west-1");
    assert_eq!(cluster.datacenter.as_deref(), Some("eu-west"));
    assert_eq!(cluster.dial_timeout, crate::config::DEFAULT_DIAL_TIMEOUT);
    assert_eq!(cluster.lease, Duration::from_secs(10));
}

#[test]
fn cluster_errors_name_their_keys() {
    let text = "[cluster]\n\
                etcd = [\"http://127.0.0.1:2379/v3\", \"https://127.0.0.1:2380\", \"ftp://x\"]\n\
                prefix = \"geolb\"\n\
                node = \"a b\"\n\
                datacenter = \"nowhere\"\n\
                cert = \"c.pem\"\n\
                user = \"root\"\n\
                dial_timeout = \"0s\"\n\
                lease = \"1500ms\"\n";
    let shown: Vec<String> = errors(text).iter().map(|e| e.to_string()).collect();
    let expect = [
        ("line 2: cluster.etcd[0]", "no path"),
        ("line 2: cluster.etcd[2]", "http:// or https://"),
        ("line 3: cluster.prefix", "starting and ending with '/'"),
        ("line 4: cluster.node", ""),
        ("line 5: cluster.datacenter", "no [[datacenter]] is defined"),
        ("line 6: cluster.cert", "add key"),
        ("line 7: cluster.user", "add password_file"),
        ("line 8: cluster.dial_timeout", "longer than 0"),
        ("line 9: cluster.lease", "at least \"2s\""),
    ];
    for (at, says) in expect {
        assert!(
            shown.iter().any(|e| e.starts_with(at) && e.contains(says)),
            "no {at:?} saying {says:?} in {shown:#?}"
        );
    }
    let mixed = errors("[cluster]\netcd = [\"http://a:1\", \"https://b:2\"]\nnode = \"n\"\n");
    assert!(
        mixed[0].to_string().contains("mixes http:// and https://"),
        "{mixed:?}"
    );
    let none = errors("[cluster]\netcd = []\nnode = \"n\"\n");
    assert!(
        none[0].to_string().contains("at least one etcd endpoint"),
        "{none:?}"
    );
}

#[test]
fn policy_map_weight_and_capacity_mistakes_name_their_key_and_line() {
    const DCS: &str = "[[datacenter]]\nname = \"eu\"\nlocation = { lat = 1, lon = 2 }\naddresses = [\"192.0.2.1\"]\n\
        [[datacenter]]\nname = \"us\"\nlocation = { lat = 3, lon = 4 }\naddresses = [\"192.0.2.2\"]\n";
    const ZONE: &str = "[dns]\nlisten = [\"127.0.0.1:5353\"]\n[[dns.zone]]\norigin = \"mysite.com\"\n\
        soa = { mname = \"ns1\", rname = \"hostmaster\", serial = 1, refresh = \"1h\", retry = \"10m\", expire = \"14d\", minimum = \"60s\" }\n\
        ns = [\"ns1\"]\n";
    // Lines 1-14 are the data centers and the zone; the geo name is on 15-16.
    let geo = |rest: &str| format!("{DCS}{ZONE}[[dns.geo]]\nname = \"api.mysite.com\"\n{rest}");
    let map = |entry: &str| geo(&format!("[[dns.geo.map]]\n{entry}"));
    let cases: Vec<(String, &str, usize, &str)> = vec![
        (
            map("datacenters = [\"eu\"]"),
            "dns.geo[0].map[0]",
            17,
            "needs what it matches",
        ),
        (
            map("continent = \"EU\"\ncountry = \"DE\"\ndatacenters = [\"eu\"]"),
            "dns.geo[0].map[0]",
            17,
            "matches one thing",
        ),
        (
            map("continent = \"XX\"\ndatacenters = [\"eu\"]"),
            "dns.geo[0].map[0].continent",
            18,
            "continent code",
        ),
        (
            map("country = \"DEU\"\ndatacenters = [\"eu\"]"),
            "dns.geo[0].map[0].country",
            18,
            "two-letter",
        ),
        (
            map("subdivision = \"USWA\"\ndatacenters = [\"eu\"]"),
            "dns.geo[0].map[0].subdivision",
            18,
            "ISO 3166-2",
        ),
        (
            map("cidr = \"10.0.0.1/8\"\ndatacenters = [\"eu\"]"),
            "dns.geo[0].map[0].cidr",
            18,
            "",
        ),
        (
            map("country = \"DE\"\ndatacenters = [\"mars\"]"),
            "dns.geo[0].map[0].datacenters[0]",
            19,
            "no [[datacenter]]",
        ),
        (
            map(
                "country = \"DE\"\ndatacenters = [\"eu\"]\n[[dns.geo.map]]\ncountry = \"de\"\nexclude = [\"us\"]",
            ),
            "dns.geo[0].map[1]",
            20,
            "dns.geo[0].map[0] matches the same clients",
        ),
        (
            map("country = \"DE\"\ndatacenters = [\"eu\"]\nexclude = [\"eu\"]"),
            "dns.geo[0].map[0].exclude[0]",
            20,
            "either tried or excluded",
        ),
        (
            map("country = \"DE\"\nonly = true"),
            "dns.geo[0].map[0].only",
            17,
            "needs datacenters",
        ),
        (
            map("country = \"DE\"\nexclude = [\"eu\", \"us\"]"),
            "dns.geo[0].map[0].exclude",
            17,
            "every candidate",
        ),
        (
            map("country = \"DE\"\ndatacenters = [\"eu\"]\nfailover_outside = true"),
            "dns.geo[0].map[0].failover_outside",
            17,
            "nothing is excluded",
        ),
        (
            map("country = \"DE\"\ndatacenters = [{ name = \"eu\", weight = -1 }]"),
            "dns.geo[0].map[0].datacenters[0].weight",
            19,
            "",
        ),
        (
            map("country = \"DE\"\ndatacenters = [{ name = \"eu\" }]"),
            "dns.geo[0].map[0].datacenters[0].weight",
            19,
            "required",
        ),
        (
            geo(
                "datacenters = [\"eu\"]\n[[dns.geo.map]]\ncountry = \"DE\"\ndatacenters = [\"us\"]",
            ),
            "dns.geo[0].map[0].datacenters[0]",
            20,
            "not a candidate of this geo name",
        ),
        (geo("spill_over = 0"), "dns.geo[0].spill_over", 17, ""),
        (
            DCS.replace(
                "addresses = [\"192.0.2.2\"]",
                "addresses = [{ addr = \"192.0.2.2\", weight = \"x\" }]",
            ),
            "datacenter[1].addresses[0].weight",
            8,
            "",
        ),
        (
            DCS.replace(
                "addresses = [\"192.0.2.2\"]",
                "addresses = [{ addr = \"192.0.2.2\", weight = 1 }, \"192.0.2.2\"]",
            ),
            "datacenter[1].addresses[1]",
            8,
            "listed twice",
        ),
        (
            format!("{DCS}capacity = 0"),
            "datacenter[1].capacity",
            9,
            "",
        ),
    ];
    for (text, path, line, words) in &cases {
        let found = errors(text);
        assert!(
            found
                .iter()
                .any(|e| e.path == *path && e.line == Some(*line) && e.message.contains(words)),
            "expected an error at {path} on line {line} saying {words:?} from:\n{text}\ngot:\n{}",
            ConfigErrors(found.clone())
        );
    }
    // A good map, weights and capacity come through.
    let text = map("subdivision = \"us-wa\"\ndatacenters = [{ name = \"us\", weight = 7 }, \"eu\"]\nonly = true\n\
        [[dns.geo.map]]\ncidr = \"10.0.0.0/8\"\nexclude = [\"us\"]\nfailover_outside = true")
        .replace("addresses = [\"192.0.2.1\"]", "addresses = [{ addr = \"192.0.2.1\", weight = 3 }, \"192.0.2.9\"]\ncapacity = 5");
    let config = parse_str(&text, Path::new("/tmp/geolb.toml")).unwrap_or_else(|e| panic!("{e}"));
    let g = &config.dns.as_ref().unwrap().geo[0];
    assert_eq!(
        g.maps[0].matches,
        MapMatch::Subdivision("US".into(), "WA".into())
    );
    assert_eq!(
        (g.maps[0].datacenters.clone(), g.maps[0].weights.clone()),
        (vec!["us".to_owned(), "eu".to_owned()], vec![7, 1])
    );
    assert!(g.maps[0].only && g.maps[1].failover_outside);
    assert_eq!(config.datacenters[0].weights, [3, 1]);
    assert_eq!(config.datacenters[0].capacity, 5);
    assert!(config.datacenters[1].weights.is_empty());
}
