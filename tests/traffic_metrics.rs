//! The traffic series through the real binary on port 0: per backend
//! (responses by class, response time, connect errors, timeouts, retries,
//! bytes), per listener (connections accepted, HTTP bytes), DNS (by
//! protocol, truncated, ECS, answer latency); and the Grafana dashboard,
//! whose every metric must exist in a running daemon's `/metrics`.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use support::library::promtool_check;
use support::{
    Backend, Geolb, dns_a_from, eventually, get, metric_value as value, refused_addr, request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

/// `web` (http, 300 ms request timeout, one retry) -> pool `web`
/// (`backends`, round robin, no check so a refusing one stays in);
/// `db` (tcp) -> pool `db` (`db`).
fn config(backends: &[SocketAddr], db: SocketAddr) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"web\"\nbalance = \"round_robin\"\nbackends = [{}]\n\
         [[pool]]\nname = \"db\"\nbackends = [{{ addr = \"{db}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\nretries = 1\n\
         timeouts = {{ request = \"300ms\" }}\n\
         [[listener]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"db\"\n",
        list.join(", ")
    )
}

fn per_backend(family: &str, pool: &str, backend: SocketAddr, extra: &str) -> String {
    format!("{family}{{pool=\"{pool}\",backend=\"{backend}\"{extra}}}")
}

#[tokio::test]
async fn backend_and_listener_series_count_requests_bytes_and_failures() {
    let ok = Backend::start("ok").await;
    let db = Backend::start("db").await;
    let refused = refused_addr();
    let geolb = Geolb::start(&config(&[ok.addr, refused], db.addr)).await;
    let web = geolb.listener("web");

    let metrics = geolb.metrics().await;
    for backend in [ok.addr, refused] {
        for series in [
            per_backend(
                "geolb_backend_http_responses_total",
                "web",
                backend,
                ",code=\"2xx\"",
            ),
            per_backend(
                "geolb_backend_http_responses_total",
                "web",
                backend,
                ",code=\"5xx\"",
            ),
            per_backend(
                "geolb_backend_response_time_seconds_count",
                "web",
                backend,
                "",
            ),
            per_backend("geolb_backend_connect_errors_total", "web", backend, ""),
            per_backend("geolb_backend_timeouts_total", "web", backend, ""),
            per_backend("geolb_backend_retries_total", "web", backend, ""),
            per_backend(
                "geolb_backend_bytes_total",
                "web",
                backend,
                ",direction=\"in\"",
            ),
            per_backend(
                "geolb_backend_bytes_total",
                "web",
                backend,
                ",direction=\"out\"",
            ),
        ] {
            assert_eq!(value(&metrics, &series), Some(0.0), "{series}:\n{metrics}");
        }
    }
    for series in [
        "geolb_listener_connections_total{listener=\"web\"}",
        "geolb_listener_connections_total{listener=\"db\"}",
        "geolb_http_bytes_total{listener=\"web\",pool=\"web\",direction=\"in\"}",
        "geolb_http_bytes_total{listener=\"web\",pool=\"web\",direction=\"out\"}",
    ] {
        assert_eq!(value(&metrics, series), Some(0.0), "{series}:\n{metrics}");
    }
    promtool_check(&metrics);

    // Four uploads of 5 bytes, each answered with the count; round robin
    // sends two of them to the refusing backend first, then to `ok`.
    for _ in 0..4 {
        let (status, _, body) = request(web, "POST", "/upload", &[], Bytes::from_static(b"12345"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body:?}");
    }
    let (status, _, body) = get(web, "/bytes?n=1000", &[]).await.unwrap();
    assert_eq!((status, body.len()), (200, 1000));
    let (status, _, _) = get(web, "/slow?ms=3000", &[]).await.unwrap();
    assert_eq!(status, 504);
    // One TCP connection: 8 bytes in, the backend's 400 out.
    let mut conn = tokio::net::TcpStream::connect(geolb.listener("db"))
        .await
        .unwrap();
    conn.write_all(b"oops\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, conn.read_to_end(&mut answer)).await;
    assert!(!answer.is_empty());
    drop(conn);

    let metrics = geolb.metrics().await;
    let at = |series: String| value(&metrics, &series).unwrap_or(-1.0);
    assert_eq!(
        at(per_backend(
            "geolb_backend_http_responses_total",
            "web",
            ok.addr,
            ",code=\"2xx\""
        )),
        5.0,
        "{metrics}"
    );
    assert_eq!(
        at(per_backend(
            "geolb_backend_response_time_seconds_count",
            "web",
            ok.addr,
            ""
        )),
        5.0,
        "{metrics}"
    );
    assert_eq!(
        at(per_backend(
            "geolb_backend_timeouts_total",
            "web",
            ok.addr,
            ""
        )),
        1.0,
        "{metrics}"
    );
    // Each request that met the refusing backend first was retried on `ok`.
    let refusals = at(per_backend(
        "geolb_backend_connect_errors_total",
        "web",
        refused,
        "",
    ));
    assert!(refusals >= 1.0, "{metrics}");
    assert_eq!(
        at(per_backend(
            "geolb_backend_retries_total",
            "web",
            ok.addr,
            ""
        )),
        refusals,
        "{metrics}"
    );
    assert_eq!(
        at(per_backend(
            "geolb_backend_retries_total",
            "web",
            refused,
            ""
        )),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        at(per_backend(
            "geolb_backend_bytes_total",
            "web",
            ok.addr,
            ",direction=\"in\""
        )),
        20.0,
        "{metrics}"
    );
    let answered = at(per_backend(
        "geolb_backend_bytes_total",
        "web",
        ok.addr,
        ",direction=\"out\"",
    ));
    assert!(answered >= 1000.0, "{metrics}");
    assert_eq!(
        value(
            &metrics,
            "geolb_http_bytes_total{listener=\"web\",pool=\"web\",direction=\"in\"}"
        ),
        Some(20.0)
    );
    assert_eq!(
        value(
            &metrics,
            "geolb_http_bytes_total{listener=\"web\",pool=\"web\",direction=\"out\"}"
        ),
        Some(answered)
    );
    assert_eq!(
        at(per_backend(
            "geolb_backend_bytes_total",
            "db",
            db.addr,
            ",direction=\"in\""
        )),
        8.0,
        "{metrics}"
    );
    assert!(
        at(per_backend(
            "geolb_backend_bytes_total",
            "db",
            db.addr,
            ",direction=\"out\""
        )) > 0.0
    );
    assert_eq!(
        value(
            &metrics,
            "geolb_listener_connections_total{listener=\"web\"}"
        ),
        Some(6.0)
    );
    assert_eq!(
        value(
            &metrics,
            "geolb_listener_connections_total{listener=\"db\"}"
        ),
        Some(1.0)
    );
    promtool_check(&metrics);

    // The refusing backend leaves the config: its series leave /metrics,
    // and `ok` keeps its counts across the reload.
    geolb.write_config(&config(&[ok.addr], db.addr)).unwrap();
    let (status, _, _) = request(geolb.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let metrics = geolb.metrics().await;
    let gone = format!("backend=\"{refused}\"");
    let left: Vec<&str> = metrics.lines().filter(|l| l.contains(&gone)).collect();
    assert!(left.is_empty(), "left after the reload: {left:#?}");
    assert_eq!(
        value(
            &metrics,
            &per_backend(
                "geolb_backend_http_responses_total",
                "web",
                ok.addr,
                ",code=\"2xx\""
            )
        ),
        Some(5.0)
    );
    promtool_check(&metrics);
}

const DNS: &str = "[dns]\nlisten = [\"127.0.0.1:0\"]\n\
    [[dns.zone]]\norigin = \"example.test\"\n\
    soa = { mname = \"ns1.example.test.\", rname = \"hostmaster.example.test.\", serial = 1, refresh = \"1h\", retry = \"10m\", expire = \"14d\", minimum = \"60s\" }\n\
    ns = [\"ns1.example.test.\"]\n\
    records = [BIG]\n\
    [[dns.geo]]\nname = \"www.example.test\"\n\
    [[datacenter]]\nname = \"paris\"\nlocation = { lat = 48.85, lon = 2.35 }\naddresses = [\"192.0.2.1\"]\n";

/// Six 200-character TXT records: too big for 512 bytes of UDP.
fn dns_config() -> String {
    let text = "x".repeat(200);
    let big: Vec<String> = (0..6)
        .map(|i| format!("{{ name = \"big\", type = \"TXT\", value = \"{i}{text}\" }}"))
        .collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        DNS.replace("BIG", &big.join(", "))
    )
}

/// A TXT query without EDNS, over UDP: the answer's TC flag.
async fn txt_truncated(server: SocketAddr, name: &str) -> bool {
    let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(
        Name::from_ascii(name).unwrap(),
        RecordType::TXT,
    ));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&msg.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("a DNS answer")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap().metadata.truncation
}

/// An A query over TCP; the answer's length.
async fn a_over_tcp(server: SocketAddr, name: &str) -> usize {
    let mut msg = Message::new(9, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let wire = msg.to_vec().unwrap();
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&wire);
    stream.write_all(&framed).await.unwrap();
    let len = tokio::time::timeout(WAIT, stream.read_u16())
        .await
        .unwrap()
        .unwrap();
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await.unwrap();
    reply.len()
}

#[tokio::test]
async fn dns_series_by_protocol_truncation_ecs_and_latency() {
    let geolb = Geolb::start(&dns_config()).await;
    let server: SocketAddr = geolb.dns_addr().await;
    let metrics = geolb.metrics().await;
    let zero = [
        "geolb_dns_queries_by_protocol_total{protocol=\"udp\"}",
        "geolb_dns_queries_by_protocol_total{protocol=\"tcp\"}",
        "geolb_dns_truncated_responses_total",
        "geolb_dns_ecs_queries_total",
        "geolb_dns_answer_duration_seconds_count",
        "geolb_dns_answer_duration_seconds_bucket{le=\"0.00001\"}",
    ];
    for series in zero {
        assert_eq!(value(&metrics, series), Some(0.0), "{series}:\n{metrics}");
    }
    promtool_check(&metrics);

    // Fast path with and without ECS, the general path truncating, TCP.
    let fast = dns_a_from(server, "127.0.0.1", "www.example.test.", None).await;
    assert_eq!(fast, ["192.0.2.1"]);
    let with_ecs = dns_a_from(server, "127.0.0.1", "www.example.test.", Some("192.0.2.77")).await;
    assert_eq!(with_ecs, ["192.0.2.1"]);
    assert!(txt_truncated(server, "big.example.test.").await);
    assert!(a_over_tcp(server, "www.example.test.").await > 12);

    // The UDP thread counts after its send returns: wait for it.
    eventually("the DNS answers counted", WAIT, || async {
        let metrics = geolb.metrics().await;
        value(&metrics, "geolb_dns_answer_duration_seconds_count") == Some(4.0)
    })
    .await;
    let metrics = geolb.metrics().await;
    for (series, expected) in [
        ("geolb_dns_queries_by_protocol_total{protocol=\"udp\"}", 3.0),
        ("geolb_dns_queries_by_protocol_total{protocol=\"tcp\"}", 1.0),
        ("geolb_dns_truncated_responses_total", 1.0),
        ("geolb_dns_ecs_queries_total", 1.0),
        ("geolb_dns_answer_duration_seconds_bucket{le=\"+Inf\"}", 4.0),
    ] {
        assert_eq!(
            value(&metrics, series),
            Some(expected),
            "{series}:\n{metrics}"
        );
    }
    // Loopback answers take well under 100 ms.
    assert_eq!(
        value(
            &metrics,
            "geolb_dns_answer_duration_seconds_bucket{le=\"0.1\"}"
        ),
        Some(4.0),
        "{metrics}"
    );
    promtool_check(&metrics);
}

/// Every metric name in a PromQL expression: identifiers starting with
/// `geolb_` or `process_` (label names and functions never do).
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(at) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let after = &rest[at..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(after.len());
        let word = &after[..end];
        // Not the tail of a longer token (a label value or a number).
        let joined = at > 0 && rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        if !joined && (word.starts_with("geolb_") || word.starts_with("process_")) {
            into.insert(word.to_owned());
        }
        rest = &after[end..];
    }
}

/// Every `expr` (panel targets) and annotation `expr` in the dashboard.
fn exprs(node: &serde_json::Value, into: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => into.push(s.clone()),
                    _ => exprs(v, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, into)),
        _ => {}
    }
}

/// The families `/metrics` declares (`# TYPE name kind`).
fn families(metrics: &str) -> Vec<(String, String)> {
    metrics
        .lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("# TYPE ")?.split(' ');
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// Whether `name` is one of `declared`, a histogram's `_bucket`, `_count`
/// or `_sum` counting as the histogram.
fn exported(name: &str, declared: &[(String, String)]) -> bool {
    declared.iter().any(|(family, kind)| {
        family == name
            || (kind == "histogram"
                && ["_bucket", "_count", "_sum"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(family.as_str())))
    })
}

#[tokio::test]
async fn the_dashboard_queries_only_metrics_the_daemon_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana/geolb.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("dashboard JSON");
    // Importable as is: a datasource input or variable, panels, a title.
    let text = dashboard.to_string();
    assert!(text.contains("DS_PROMETHEUS") || text.contains("${datasource}"));
    assert!(dashboard["title"].is_string() && dashboard["panels"].is_array());
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let mut names = BTreeSet::new();
    for e in &all {
        metric_names(e, &mut names);
    }
    assert!(names.len() >= 20, "only {names:?}");

    // HTTP, TCP and DNS configured, so every family can be there.
    let web = Backend::start("web").await;
    let db = Backend::start("db").await;
    let text = format!(
        "{}\n{}",
        config(&[web.addr], db.addr),
        dns_config().replace("[admin]\nlisten = \"127.0.0.1:0\"\n", "")
    )
    .replace(
        "[[pool]]\nname = \"web\"\n",
        "[[pool]]\nname = \"web\"\ncheck = { kind = \"tcp\", interval = \"100ms\" }\n",
    )
    .replace(
        "addresses = [\"192.0.2.1\"]\n",
        "addresses = [\"192.0.2.1\"]\npools = [\"web\"]\n",
    );
    let geolb = Geolb::start(&text).await;
    // The override gauge has a series only while an override is in force.
    let drain = format!("/pools/web/backends/{}/drain", web.addr);
    let (status, _, _) = request(geolb.admin, "POST", &drain, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let metrics = geolb.metrics().await;
    let declared = families(&metrics);
    let missing: Vec<&String> = names.iter().filter(|n| !exported(n, &declared)).collect();
    assert!(
        missing.is_empty(),
        "not in /metrics: {missing:?}\n{metrics}"
    );
}

#[test]
fn metric_names_are_found_in_promql() {
    let mut names = BTreeSet::new();
    metric_names(
        "histogram_quantile(0.99, sum by (le, pool) (rate(geolb_backend_response_time_seconds_bucket{pool=~\"$pool\"}[5m]))) / on(x) process_open_fds",
        &mut names,
    );
    let expected: BTreeSet<String> = [
        "geolb_backend_response_time_seconds_bucket",
        "process_open_fds",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, expected);
    let declared = vec![("geolb_x_seconds".to_owned(), "histogram".to_owned())];
    assert!(exported("geolb_x_seconds_bucket", &declared));
    assert!(!exported("geolb_y_total", &declared));
}
