//! Logs through the real binary: JSON lines, the access lines of HTTP,
//! TCP and DNS, log files reopened on SIGUSR1, log injection, and the
//! events logged once with their reason.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::library::TcpBackend;
use support::{Backend, Geolb, backend_list, eventually, get, raw, request};

const WAIT: Duration = Duration::from_secs(10);

fn config(log: &str, body: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\nshutdown_grace = \"5s\"\n\n{log}\n{body}"
    )
}

/// One pool "p" of `backends`, one http listener "web" keeping an access log.
fn web(backends: &str) -> String {
    format!(
        "[[pool]]\nname = \"p\"\nbackends = [{backends}]\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = true\n"
    )
}

/// A geolb with `log` (its `[log]` section, if any) and [`web`] over one
/// backend.
async fn web_with_log(log: &str) -> (Backend, Geolb) {
    let a = Backend::start("a").await;
    let geolb = Geolb::start(&config(log, &web(&backend_list(&[&a])))).await;
    (a, geolb)
}

/// The log's lines whose target is exactly `target`, parsed as JSON.
fn json_lines(log: &str, target: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .filter(|v| v["target"] == target)
        .collect()
}

#[tokio::test]
async fn json_lines_parse_and_the_access_line_carries_every_field() {
    let (a, geolb) = web_with_log("[log]\nformat = \"json\"").await;
    let web = geolb.listener("web");
    let (code, _, _) = request(
        web,
        "POST",
        "/upload?x=1",
        &[
            ("user-agent", "Mozilla/5.0 (X11; \"quoted\")"),
            ("referer", "https://example.com/from"),
            ("x-request-id", "req-42"),
        ],
        Bytes::from_static(b"hello"),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    eventually("the access line", WAIT, || async {
        !json_lines(&geolb.log(), "geolb::access").is_empty()
    })
    .await;
    // Every line of the log is one JSON object with the four keys.
    let log = geolb.log();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in ["ts", "level", "target", "msg"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
    }
    let lines = json_lines(&log, "geolb::access");
    assert_eq!(lines.len(), 1, "{log}");
    let v = &lines[0];
    assert_eq!(v["client"], "127.0.0.1");
    assert!(v["client_port"].as_u64().unwrap() > 0);
    assert_eq!(v["listener"], "web");
    assert_eq!(v["pool"], "p");
    assert_eq!(v["backend"], a.addr.to_string());
    assert_eq!(v["method"], "POST");
    assert_eq!(v["host"], "127.0.0.1");
    assert_eq!(v["path"], "/upload?x=1");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes_received"], 5);
    assert!(v["bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["retries"], 0);
    // A fresh connection: its connect took time; the head came after.
    assert!(v["connect_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["first_byte_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["user_agent"], "Mozilla/5.0 (X11; \"quoted\")");
    assert_eq!(v["referer"], "https://example.com/from");
    assert_eq!(v["request_id"], "req-42");
    assert_eq!(v["tls_version"], "-");
    let ts = v["ts"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
}

/// Requests geolb answers itself, refused before any backend: their
/// access lines name the `Host` the client sent, which geolb's HTTP/1
/// server keeps out of the header map when it comes first.
#[tokio::test]
async fn a_refused_request_s_access_line_names_its_host() {
    let (_a, geolb) = web_with_log("[log]\nformat = \"json\"").await;
    let web = geolb.listener("web");
    let refused = [
        (
            "GET /a/../b HTTP/1.1\r\nHost: dots.test\r\n\r\n",
            400,
            "dots.test",
        ),
        (
            "CONNECT c.test:443 HTTP/1.1\r\nHost: c.test:443\r\n\r\n",
            405,
            "c.test:443",
        ),
        (
            "GET / HTTP/1.1\r\nX-Other: 1\r\nHost: second.test\r\nHost: x\r\n\r\n",
            400,
            "second.test",
        ),
    ];
    for (head, status, _) in refused {
        let answer = raw(web, head.as_bytes(), WAIT).await;
        assert_eq!(support::status_of(&answer), status, "{head}: {answer}");
    }
    eventually("three access lines", WAIT, || async {
        json_lines(&geolb.log(), "geolb::access").len() == 3
    })
    .await;
    let lines = json_lines(&geolb.log(), "geolb::access");
    for ((head, status, host), v) in refused.iter().zip(&lines) {
        assert_eq!(v["status"], *status, "{head}: {v}");
        assert_eq!(v["host"], *host, "{head}: {v}");
    }
}

#[tokio::test]
async fn client_text_cannot_start_a_line_of_its_own() {
    let (_backend, geolb) = web_with_log("").await;
    let web = geolb.listener("web");
    // U+0085 (NEL) and U+2028 end lines for some readers; a raw CR or LF
    // cannot reach a header value (the HTTP parser ends the header there).
    let request = "GET /p?q=%0d%0aINJECTED=1 HTTP/1.1\r\nHost: a\r\n\
                   User-Agent: ua\u{85}INJECTED-UA fake=1\r\n\
                   Referer: r\u{2028}INJECTED-REF\r\nConnection: close\r\n\r\n";
    let answer = raw(web, request.as_bytes(), WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    eventually("the access line", WAIT, || async {
        geolb.log().contains("geolb::access")
    })
    .await;
    let log = geolb.log();
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("geolb::access"))
        .collect();
    assert_eq!(access.len(), 1, "{log}");
    assert!(
        log.lines().all(|l| !l.starts_with("INJECTED")),
        "a client began a line:\n{log}"
    );
    assert!(!log.contains('\u{85}'), "NEL reached the log:\n{log}");
    let line = access[0];
    assert!(
        line.contains(r#"user_agent="ua\\u{85}INJECTED-UA fake=1""#),
        "{line}"
    );
    assert!(line.contains("path=/p?q=%0d%0aINJECTED=1"), "{line}");
}

#[tokio::test]
async fn the_access_file_is_reopened_on_sigusr1_after_a_rename() {
    let (_backend, geolb) = web_with_log("[log]\naccess_file = \"access.log\"").await;
    let web = geolb.listener("web");
    let access = geolb.dir.path().join("access.log");
    let rotated = geolb.dir.path().join("access.log.1");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    for i in 0..3 {
        assert_eq!(get(web, &format!("/before-{i}"), &[]).await.unwrap().0, 200);
    }
    eventually("three access lines in the file", WAIT, || async {
        read(&access).lines().count() == 3
    })
    .await;
    // Access lines go to their own file only.
    assert!(!geolb.log().contains("geolb::access"), "{}", geolb.log());

    std::fs::rename(&access, &rotated).unwrap();
    geolb.signal("USR1");
    eventually("the access file opened anew", WAIT, || async {
        access.exists() && geolb.log().contains("log file reopened")
    })
    .await;
    for i in 0..3 {
        assert_eq!(get(web, &format!("/after-{i}"), &[]).await.unwrap().0, 200);
    }
    eventually("three new lines in the new file", WAIT, || async {
        read(&access).lines().count() == 3
    })
    .await;
    let (old, new) = (read(&rotated), read(&access));
    for i in 0..3 {
        assert!(old.contains(&format!("/before-{i}")), "{old}");
        assert!(new.contains(&format!("/after-{i}")), "{new}");
    }
    assert_eq!(old.lines().count(), 3, "{old}");
    assert!(!new.contains("/before-"), "{new}");

    // A reopen that fails keeps the file it has.
    std::fs::remove_file(&access).unwrap();
    std::fs::create_dir(&access).unwrap();
    geolb.signal("USR1");
    eventually("the failed reopen logged", WAIT, || async {
        geolb.log().contains("cannot reopen the log file")
    })
    .await;
    assert_eq!(get(web, "/still", &[]).await.unwrap().0, 200);
    std::fs::remove_dir(&access).unwrap();
}

#[tokio::test]
async fn the_main_log_file_takes_every_line_and_cannot_change_on_reload() {
    let a = Backend::start("a").await;
    let body = web(&backend_list(&[&a]));
    let geolb = Geolb::start(&config("[log]\nfile = \"geolb.log\"", &body)).await;
    let file = geolb.dir.path().join("geolb.log");
    let stderr = std::fs::read_to_string(geolb.dir.path().join("stderr.log")).unwrap();
    assert!(stderr.is_empty(), "stderr has lines: {stderr}");
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("admin listening")
    );
    assert_eq!(get(geolb.listener("web"), "/x", &[]).await.unwrap().0, 200);
    eventually("the access line in the file", WAIT, || async {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains("geolb::access")
    })
    .await;
    geolb
        .write_config(&config(
            "[log]\nfile = \"other.log\"\nformat = \"json\"",
            &body,
        ))
        .unwrap();
    let (code, _, answer) = request(geolb.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer.contains("log.file") && answer.contains("needs a restart"),
        "{answer}"
    );
    assert!(answer.contains("log.format"), "{answer}");
}

#[tokio::test]
async fn a_tcp_connection_has_one_access_line_at_its_end() {
    let backend = TcpBackend::echo().await;
    let dead = support::refused_addr();
    let geolb = Geolb::start(&config(
        "",
        &format!(
            "[[pool]]\nname = \"db\"\nbackends = [{{ addr = \"{}\" }}]\n\
             [[pool]]\nname = \"gone\"\nbackends = [{{ addr = \"{dead}\" }}]\n\
             [[listener]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"db\"\naccess_log = true\n\
             [[listener]]\nname = \"gone\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"gone\"\n\
             retries = 0\naccess_log = true\n",
            backend.addr
        ),
    ))
    .await;
    let mut stream = TcpStream::connect(geolb.listener("db")).await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 5];
    stream.read_exact(&mut echoed).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    drop(stream);
    let mut refused = TcpStream::connect(geolb.listener("gone")).await.unwrap();
    let mut nothing = Vec::new();
    let _ = refused.read_to_end(&mut nothing).await;

    eventually("both TCP access lines", WAIT, || async {
        geolb.log().matches("geolb::access::tcp").count() >= 2
    })
    .await;
    let log = geolb.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("geolb::access::tcp"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    let ok = lines.iter().find(|l| l.contains("listener=db")).unwrap();
    for part in [
        "client=127.0.0.1",
        "pool=db",
        &format!("backend={}", backend.addr),
        "bytes_in=5",
        "bytes_out=5",
        "end=client_closed",
        "duration_ms=",
    ] {
        assert!(ok.contains(part), "{part} in {ok}");
    }
    let failed = lines.iter().find(|l| l.contains("listener=gone")).unwrap();
    for part in ["backend=-", "end=connect_failed", "bytes_in=0", "refused"] {
        assert!(failed.contains(part), "{part} in {failed}");
    }
}

const DNS: &str = r#"
[dns]
listen = ["127.0.0.1:0"]
query_log = RATE

[[dns.zone]]
origin = "mysite.com"
soa = { mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }
ns = ["ns1.mysite.com."]
records = [{ name = "ns1", type = "A", value = "192.0.2.53" }]

[[dns.geo]]
name = "api.mysite.com"
datacenters = ["eu-west"]

[[datacenter]]
name = "eu-west"
location = { lat = 53.35, lon = -6.26 }
addresses = ["198.51.100.10"]
always_up = true
"#;

#[tokio::test]
async fn dns_queries_are_logged_at_the_sampling_rate() {
    let geolb = Geolb::start(&config(
        "[log]\nformat = \"json\"",
        &DNS.replace("RATE", "1.0"),
    ))
    .await;
    let server: SocketAddr = geolb.dns_addr().await;
    let answers =
        support::dns_a_from(server, "127.0.0.1", "api.mysite.com.", Some("192.0.2.7")).await;
    assert_eq!(answers, ["198.51.100.10"]);
    // Answered by the general path: an unknown name.
    let _ = support::dns_a_from(server, "127.0.0.1", "nope.mysite.com.", None).await;
    eventually("two query lines", WAIT, || async {
        json_lines(&geolb.log(), "geolb::access::dns").len() == 2
    })
    .await;
    tcp_query(server, "api.mysite.com.").await;
    eventually("the TCP query's line", WAIT, || async {
        json_lines(&geolb.log(), "geolb::access::dns").len() == 3
    })
    .await;
    let lines = json_lines(&geolb.log(), "geolb::access::dns");
    let geo = &lines[0];
    assert_eq!(geo["client"], "127.0.0.1");
    assert_eq!(geo["protocol"], "udp");
    assert_eq!(geo["qname"], "api.mysite.com.");
    assert_eq!(geo["qtype"], "A");
    assert_eq!(geo["rcode"], "NOERROR");
    assert_eq!(geo["ecs"], "192.0.2.7/32");
    assert_eq!(geo["datacenters"], "eu-west");
    assert_eq!(geo["truncated"], false);
    assert!(geo["size"].as_u64().unwrap() > 12, "{geo}");
    let other = &lines[1];
    assert_eq!(other["qname"], "nope.mysite.com.");
    assert_eq!(other["rcode"], "NXDOMAIN");
    assert_eq!(other["datacenters"], "-");
    assert_eq!(other["ecs"], "-");
    let tcp = &lines[2];
    assert_eq!(tcp["protocol"], "tcp");
    assert_eq!(tcp["qname"], "api.mysite.com.");
    assert_eq!(tcp["datacenters"], "eu-west");

    // A reload to 0 turns it off.
    geolb
        .write_config(&config(
            "[log]\nformat = \"json\"",
            &DNS.replace("RATE", "0"),
        ))
        .unwrap();
    let reload = || async {
        let (code, _, body) = request(geolb.admin, "POST", "/reload", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    };
    reload().await;
    for _ in 0..20 {
        let _ = support::dns_a_from(server, "127.0.0.1", "api.mysite.com.", None).await;
    }
    // A line logged after every query was answered: the writer keeps
    // order, so a query line would be in the log before it.
    reload().await;
    eventually("the second reload logged", WAIT, || async {
        geolb.log().matches("config reloaded").count() == 2
    })
    .await;
    assert_eq!(json_lines(&geolb.log(), "geolb::access::dns").len(), 3);
}

/// One A query for `name` over TCP; waits for the answer.
async fn tcp_query(server: SocketAddr, name: &str) {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let bytes = msg.to_vec().unwrap();
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_u16(bytes.len() as u16).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await.unwrap();
}

#[tokio::test]
async fn health_changes_and_overrides_are_logged_once_with_their_reason() {
    let a = Backend::start("a").await;
    let geolb = Geolb::start(&config(
        "",
        &format!(
            "[[pool]]\nname = \"p\"\n\
             check = {{ kind = \"http\", path = \"/health\", interval = \"50ms\", timeout = \"2s\", rise = 1, fall = 1 }}\n\
             backends = [{}]\n",
            backend_list(&[&a])
        ),
    ))
    .await;
    let target = a.addr.to_string();
    let lines = |what: &'static str| {
        let log = geolb.log();
        let target = target.clone();
        log.lines()
            .filter(|l| l.contains(what) && l.contains(&target))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    a.set_health(503);
    eventually("the backend down", WAIT, || async {
        geolb.backend_state("p", a.addr).await == "down"
    })
    .await;
    // Checks go on failing: the change is still one line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let down = lines("health check: now down");
    assert_eq!(down.len(), 1, "{}", geolb.log());
    assert!(down[0].contains("503"), "the reason: {}", down[0]);
    a.set_health(200);
    eventually("the backend up", WAIT, || async {
        lines("health check: now up").len() == 1
    })
    .await;

    let path = format!("/backends/{}/drain", a.addr);
    let (code, _, _) = request(geolb.admin, "POST", &path, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200);
    eventually("the override logged with who set it", WAIT, || async {
        lines("runtime override set")
            .iter()
            .any(|l| l.contains("state=\"drain\"") && l.contains("by=127.0.0.1:"))
    })
    .await;
    assert_eq!(lines("runtime override set").len(), 1);

    // A reload says what it changed.
    let b = Backend::start("b").await;
    geolb
        .write_config(&config(
            "",
            &format!(
                "[[pool]]\nname = \"p\"\nbackends = [{}]\n",
                backend_list(&[&a, &b])
            ),
        ))
        .unwrap();
    let (code, _, body) = request(geolb.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    eventually("the reload logged with what changed", WAIT, || async {
        geolb.log().lines().any(|l| {
            l.contains("config reloaded")
                && l.contains(&format!("changed=\"backends +p/{}\"", b.addr))
        })
    })
    .await;
}

#[tokio::test]
async fn a_log_file_that_cannot_be_opened_stops_the_start_saying_why() {
    let mut geolb = Geolb::spawn(&config("[log]\nfile = \"no/such/dir/geolb.log\"", ""), &[]);
    let status = geolb.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(1));
    let log = geolb.log();
    assert!(
        log.contains("cannot open log file") && log.contains("no/such/dir/geolb.log"),
        "{log}"
    );
}

#[tokio::test]
async fn https_access_lines_name_the_tls_version_cipher_and_a_reused_connection() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use support::library::{Pki, tls_connect, tls_list};

    let pki = Pki::new();
    let leaf = pki.leaf("web", &["a.test"]);
    let a = Backend::start("a").await;
    let geolb = Geolb::start(&config(
        "[log]\nformat = \"json\"",
        &format!(
            "[[pool]]\nname = \"p\"\nbackends = [{}]\n\
             [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\npool = \"p\"\n\
             access_log = true\n{}\n",
            backend_list(&[&a]),
            tls_list(&[&leaf])
        ),
    ))
    .await;
    let tls = tls_connect(&pki.client(&[b"h2"]), geolb.listener("tls"), "a.test")
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = http::Request::get("https://a.test/x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    eventually("two access lines", WAIT, || async {
        json_lines(&geolb.log(), "geolb::access").len() == 2
    })
    .await;
    let lines = json_lines(&geolb.log(), "geolb::access");
    for v in &lines {
        assert_eq!(v["protocol"], "HTTP/2");
        assert_eq!(v["tls_version"], "TLSv1_3");
        assert!(
            v["tls_cipher"].as_str().unwrap().starts_with("TLS13_"),
            "{v}"
        );
        assert_eq!(v["host"], "a.test");
    }
    // The second request went over the backend connection the first opened.
    assert!(lines[0]["connect_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[1]["connect_ms"], 0.0);
}

#[tokio::test]
async fn a_data_center_going_down_and_up_is_logged_once_each_with_the_reason() {
    let a = Backend::start("a").await;
    let geolb = Geolb::start(&config(
        "",
        &format!(
            "[[pool]]\nname = \"p\"\n\
             check = {{ kind = \"http\", path = \"/health\", interval = \"50ms\", timeout = \"2s\", rise = 1, fall = 1 }}\n\
             backends = [{}]\n\n\
             [[datacenter]]\nname = \"paris\"\nlocation = {{ lat = 48.86, lon = 2.35 }}\n\
             addresses = [\"192.0.2.1\"]\npools = [\"p\"]\n",
            backend_list(&[&a])
        ),
    ))
    .await;
    let lines = |what: &'static str| {
        geolb
            .log()
            .lines()
            .filter(|l| l.contains(what) && l.contains("paris"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    a.set_health(503);
    eventually("the data center down, logged", WAIT, || async {
        lines("data center: now down").len() == 1
    })
    .await;
    let down = lines("data center: now down");
    assert!(
        down[0].contains("pool p has 0 healthy backends, below min_healthy 1"),
        "{}",
        down[0]
    );
    // Still down a few watch rounds later: still one line.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(lines("data center: now down").len(), 1, "{}", geolb.log());
    a.set_health(200);
    eventually("the data center up, logged", WAIT, || async {
        lines("data center: now up").len() == 1
    })
    .await;
    let (code, _, _) = request(
        geolb.admin,
        "POST",
        "/datacenters/paris/drain",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    eventually("the drain logged as the reason", WAIT, || async {
        lines("data center: now down")
            .iter()
            .any(|l| l.contains("drained by an override"))
    })
    .await;
}
