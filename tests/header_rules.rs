//! Header rules, X-Request-Id and HSTS through the real binary: what the
//! backend receives, what the client gets (from a backend and from geolb
//! itself), the access log, a reload on an open connection, and the
//! config errors.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use support::h2::{Field, H2, HEADERS, fields};
use support::library::{Pki, tls_connect, tls_list};
use support::{Geolb, bounded, eventually, geolb_check, get, refused_addr, request};

const WAIT: Duration = Duration::from_secs(10);

/// A backend that answers every request with the request's headers, one
/// `name: value` line each in arrival order, and headers of its own that
/// rules may remove or replace.
async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let mut text = String::new();
                    for (k, v) in req.headers() {
                        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
                    }
                    let resp = Response::builder()
                        .header("server", "echo-backend")
                        .header("x-backend", "b")
                        .header("strict-transport-security", "max-age=5")
                        .header("x-request-id", "the-backend-s-own")
                        .body(Full::new(Bytes::from(text)))
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// GET / for `host` on an open HTTP/1.1 connection: the answer's
/// headers and body.
async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
) -> (HeaderMap, Bytes) {
    let req = Request::get("/")
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let resp = bounded(WAIT, "a request", sender.send_request(req))
        .await
        .unwrap();
    let headers = resp.headers().clone();
    (
        headers,
        resp.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// The values of `name` the backend reported, in order.
fn seen(body: &[u8], name: &str) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .collect()
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

async fn config(backend: SocketAddr, listener: &str) -> String {
    let gone = refused_addr();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\nformat = \"json\"\n\n\
         [[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{backend}\" }}]\n\n\
         [[pool]]\nname = \"gone\"\nbackends = [{{ addr = \"{gone}\" }}]\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = true\n{listener}\n"
    )
}

const RULES: &str = r#"
request_headers = { remove = ["X-Debug"], set = { "X-Env" = "prod" }, add = { "X-Order" = "listener", "X-Client" = "{client_ip}:{client_port} {listener} {scheme} {host} [{tls_version}] {{id={request_id}}}" } }
response_headers = { remove = ["Server"], set = { "X-Resp" = "listener" }, add = { "X-Via" = "geolb-{listener}" } }
routes = [
  { path_prefix = "/r/", pool = "p", request_headers = { set = { "X-Env" = "route" }, add = { "X-Order" = "route" } }, response_headers = { set = { "X-Resp" = "route" }, remove = ["X-Backend"] } },
  { path_prefix = "/gone/", pool = "gone" },
]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_change_requests_and_every_answer_listener_first_then_route() {
    let backend = echo_backend().await;
    let geolb = Geolb::start(&config(backend, RULES).await).await;
    let web = geolb.listener("web");

    let (code, headers, body) = get(
        web,
        "/x",
        &[
            ("host", "Site.Test:8080"),
            ("x-debug", "1"),
            ("x-env", "client"),
            ("x-order", "client"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert!(seen(&body, "x-debug").is_empty());
    assert_eq!(seen(&body, "x-env"), ["prod"]);
    assert_eq!(seen(&body, "x-order"), ["client", "listener"]);
    let id = seen(&body, "x-request-id");
    assert_eq!(id.len(), 1);
    let client = seen(&body, "x-client");
    let port = client[0]
        .split(' ')
        .next()
        .unwrap()
        .strip_prefix("127.0.0.1:")
        .unwrap();
    assert!(port.parse::<u16>().unwrap() > 0, "{client:?}");
    assert_eq!(
        client[0].split_once(' ').unwrap().1,
        format!("web http site.test [] {{id={}}}", id[0])
    );
    assert!(headers.get("server").is_none(), "{headers:?}");
    assert_eq!(values(&headers, "x-backend"), ["b"]);
    assert_eq!(values(&headers, "x-resp"), ["listener"]);
    assert_eq!(values(&headers, "x-via"), ["geolb-web"]);
    // The backend's HSTS passes: this listener sets none.
    assert_eq!(values(&headers, "strict-transport-security"), ["max-age=5"]);

    // A route's rules come after the listener's.
    let (code, headers, body) = get(web, "/r/x", &[]).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(seen(&body, "x-env"), ["route"]);
    assert_eq!(seen(&body, "x-order"), ["listener", "route"]);
    assert_eq!(values(&headers, "x-resp"), ["route"]);
    assert!(headers.get("x-backend").is_none());
    assert_eq!(values(&headers, "x-via"), ["geolb-web"]);

    // geolb's own answers get them too: a 502 and a 400.
    let (code, headers, _) = get(web, "/gone/x", &[]).await.unwrap();
    assert_eq!(code, 502);
    assert_eq!(values(&headers, "x-resp"), ["listener"]);
    assert_eq!(values(&headers, "x-via"), ["geolb-web"]);
    assert_eq!(headers["x-request-id"].len(), 32);
    let answer = support::raw(
        web,
        b"GET /../etc HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(support::status_of(&answer), 400, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("x-via: geolb-web\r\n"),
        "{answer}"
    );
}

/// The fields geolb adds (`X-Forwarded-*`) are there for the rules to
/// change or remove, and the client's own are replaced before the rules.
#[tokio::test]
async fn rules_change_the_forwarded_fields_geolb_adds() {
    let backend = echo_backend().await;
    let rules = r#"request_headers = { remove = ["X-Forwarded-Host"], set = { "X-Forwarded-Proto" = "https" }, add = { "X-Forwarded-For" = "10.9.9.9" } }"#;
    let geolb = Geolb::start(&config(backend, rules).await).await;
    let web = geolb.listener("web");
    let (code, _, body) = get(
        web,
        "/",
        &[
            ("host", "site.test"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-host", "spoofed"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(seen(&body, "x-forwarded-host").is_empty(), "{text}");
    assert_eq!(seen(&body, "x-forwarded-proto"), ["https"], "{text}");
    assert_eq!(
        seen(&body, "x-forwarded-for"),
        ["192.0.2.1, 127.0.0.1", "10.9.9.9"],
        "{text}"
    );
}

/// The `request_id` of every access line.
fn logged_ids(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "geolb::access")
        .map(|v| v["request_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_made_kept_or_replaced_and_the_same_everywhere() {
    let backend = echo_backend().await;
    let geolb = Geolb::start(&config(backend, "").await).await;
    let web = geolb.listener("web");
    let long = "x".repeat(201);
    let cases: [(Option<&str>, bool); 4] = [
        (None, false),
        (Some("abc-123.Z"), true),
        (Some("has space"), false),
        (Some(&long), false),
    ];
    let mut ids = Vec::new();
    for (sent, kept) in cases {
        let headers: Vec<(&str, &str)> = sent.map(|s| ("x-request-id", s)).into_iter().collect();
        let (code, resp, body) = get(web, "/", &headers).await.unwrap();
        assert_eq!(code, 200);
        let at_backend = seen(&body, "x-request-id");
        assert_eq!(at_backend.len(), 1, "{sent:?}");
        let id = &at_backend[0];
        if kept {
            assert_eq!(Some(id.as_str()), sent);
        } else {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
        // The client gets the request's id, not the backend's own.
        assert_eq!(values(&resp, "x-request-id"), std::slice::from_ref(id));
        ids.push(id.clone());
    }
    assert_ne!(ids[0], ids[2]);
    assert_ne!(ids[2], ids[3]);
    eventually("four access lines", WAIT, || async {
        logged_ids(&geolb.log()).len() == 4
    })
    .await;
    let mut logged = logged_ids(&geolb.log());
    logged.sort();
    ids.sort();
    assert_eq!(logged, ids);
}

/// An HTTP/2 answer's `Date` and its request id stay out of the
/// connection's HPACK table (each new value entered made the list its
/// lookups compare longer); the fields that repeat are entered once and
/// indexed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_answers_send_their_dates_and_ids_as_never_indexed() {
    let backend = echo_backend().await;
    let geolb = Geolb::start(&config(backend, "").await).await;
    let (mut h2, _) = H2::connect(geolb.listener("web"), &[]).await;
    let mut indexed_later = Vec::new();
    for i in 0..20u32 {
        let stream = 2 * i + 1;
        h2.get(stream, "/").await;
        let head = bounded(WAIT, "an answer's HEADERS", h2.next_of(HEADERS))
            .await
            .expect("an answer");
        assert_eq!(head.stream, stream);
        let fields = fields(&head.payload);
        // The backend's `date` and geolb's id.
        assert_eq!(
            fields.iter().filter(|f| **f == Field::NeverIndexed).count(),
            2,
            "answer {i}: {fields:?}"
        );
        if i > 0 {
            indexed_later.extend(fields.into_iter().filter(|f| *f == Field::Indexing));
        }
    }
    // After the first answer nothing more is entered: not even a new date.
    assert_eq!(indexed_later, [], "entered after the first answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_false_adds_none() {
    let backend = echo_backend().await;
    let geolb = Geolb::start(
        &config(
            backend,
            // On a route alone: the listener has no rules of its own.
            "request_id = false\nroutes = [{ path_prefix = \"/\", pool = \"p\", \
             request_headers = { set = { \"X-Seen-Id\" = \"<{request_id}>\" } } }]",
        )
        .await,
    )
    .await;
    let web = geolb.listener("web");
    let (_, resp, body) = get(web, "/", &[]).await.unwrap();
    assert!(seen(&body, "x-request-id").is_empty());
    assert_eq!(seen(&body, "x-seen-id"), ["<>"]);
    // The backend's own passes untouched.
    assert_eq!(values(&resp, "x-request-id"), ["the-backend-s-own"]);
    let (_, _, body) = get(web, "/", &[("x-request-id", "mine")]).await.unwrap();
    assert_eq!(seen(&body, "x-request-id"), ["mine"]);
    assert_eq!(seen(&body, "x-seen-id"), ["<mine>"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_on_https_over_http1_and_http2() {
    let backend = echo_backend().await;
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["site.test"]);
    let listener = format!(
        "[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\npool = \"p\"\n{}\n\
         hsts = {{ max_age = \"730d\", include_subdomains = true, preload = true }}\n\
         request_headers = {{ set = {{ \"X-Tls\" = \"{{tls_version}} {{scheme}}\" }} }}\n",
        tls_list(&[&leaf])
    );
    let geolb = Geolb::start(&format!("{}\n{listener}", config(backend, "").await)).await;
    let addr = geolb.listener("tls");
    let want = "max-age=63072000; includeSubDomains; preload";

    let client = pki.client(&[b"http/1.1"]);
    let tls = tls_connect(&client, addr, "site.test").await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (headers, body) = get_on(&mut sender, "site.test").await;
    assert_eq!(values(&headers, "strict-transport-security"), [want]);
    assert_eq!(seen(&body, "x-tls"), ["TLSv1.3 https"]);

    let client = pki.client(&[b"h2"]);
    let tls = tls_connect(&client, addr, "site.test").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for path in ["/", "/../refused"] {
        let req = Request::get(format!("https://site.test{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = bounded(WAIT, "https over HTTP/2", sender.send_request(req))
            .await
            .unwrap();
        assert_eq!(
            values(resp.headers(), "strict-transport-security"),
            [want],
            "{path}"
        );
        assert_eq!(resp.headers()["x-request-id"].len(), 32);
    }
    // The plain http listener of the same daemon sends none of its own.
    let (_, headers, _) = get(geolb.listener("web"), "/", &[]).await.unwrap();
    assert_eq!(values(&headers, "strict-transport-security"), ["max-age=5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_rules_on_an_open_connection() {
    let backend = echo_backend().await;
    let rules = |env: &str| {
        format!(
            "request_headers = {{ set = {{ \"X-Env\" = \"{env}\", \"X-Port\" = \"{{client_port}}\" }} }}\n\
             response_headers = {{ set = {{ \"X-Env\" = \"{env}\" }} }}"
        )
    };
    let geolb = Geolb::start(&config(backend, &rules("one")).await).await;
    let web = geolb.listener("web");
    let stream = TcpStream::connect(web).await.unwrap();
    let local_port = stream.local_addr().unwrap().port().to_string();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut send = async || {
        let (headers, body) = get_on(&mut sender, "a").await;
        (
            values(&headers, "x-env"),
            seen(&body, "x-env"),
            seen(&body, "x-port"),
        )
    };
    assert_eq!(
        send().await,
        (
            vec!["one".into()],
            vec!["one".into()],
            vec![local_port.clone()]
        )
    );

    let two = config(backend, &rules("two")).await;
    geolb.write_config(&two).unwrap();
    let (code, _, body) = request(geolb.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    // The same connection (the same client port), the new rules.
    assert_eq!(
        send().await,
        (vec!["two".into()], vec!["two".into()], vec![local_port])
    );
    assert!(!conn.is_finished());
}

/// Fields geolb's HTTP/1 server passes on unread when nothing reads them
/// (`Accept`, `Sec-Fetch-*`, ...): rules that name them still apply, from
/// the first request and after a reload on an open connection (whose
/// requests were read under a config without them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_fields_passed_unread_apply_also_after_a_reload() {
    let backend = echo_backend().await;
    let rules = r#"request_headers = { remove = ["Accept"], set = { "Sec-Fetch-Mode" = "ruled" }, add = { "Cache-Control" = "added" } }"#;
    let geolb = Geolb::start(&config(backend, "").await).await;
    let stream = TcpStream::connect(geolb.listener("web")).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let send = async |sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>| {
        let req = Request::get("/")
            .header("host", "a")
            .header("accept", "text/html")
            .header("sec-fetch-mode", "navigate")
            .header("Cache-Control", "no-cache")
            .header("sec-fetch-site", "none")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = bounded(WAIT, "a request", sender.send_request(req))
            .await
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        [
            "accept",
            "sec-fetch-mode",
            "cache-control",
            "sec-fetch-site",
        ]
        .map(|n| seen(&body, n))
    };
    assert_eq!(
        send(&mut sender).await,
        [
            vec!["text/html".to_owned()],
            vec!["navigate".into()],
            vec!["no-cache".into()],
            vec!["none".into()],
        ]
    );
    geolb.write_config(&config(backend, rules).await).unwrap();
    let (code, _, body) = request(geolb.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let want = [
        vec![],
        vec!["ruled".to_owned()],
        vec!["no-cache".into(), "added".into()],
        vec!["none".into()],
    ];
    assert_eq!(
        send(&mut sender).await,
        want,
        "on the connection opened before"
    );
    let stream = TcpStream::connect(geolb.listener("web")).await.unwrap();
    let (mut fresh, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(c);
    assert_eq!(send(&mut fresh).await, want, "on a new connection");
    assert!(!conn.is_finished());
}

#[test]
fn config_errors_name_key_and_line() {
    let config = "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:9\" }]\n\
                  [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
                  hsts = true\n\
                  request_headers = { set = { \"X Env\" = \"a\" } }\n\
                  response_headers = { set = { \"X-A\" = \"a\\r\\nSet-Cookie: x=1\" }, add = { \"X-B\" = \"{client}\" } }\n";
    let (ok, _, stderr) = geolb_check(config);
    assert!(!ok);
    for want in [
        "line 8: listener[0].hsts = true: browsers ignore Strict-Transport-Security over plain http (RFC 6797 §7.2)",
        "line 9: listener[0].request_headers.set.\"X Env\": expected a header name",
        "line 10: listener[0].response_headers.set.X-A = \"a\\r\\nSet-Cookie: x=1\": CR, LF and NUL",
        "line 10: listener[0].response_headers.add.X-B = \"{client}\": unknown variable {client}",
    ] {
        assert!(stderr.contains(want), "{want}\n{stderr}");
    }
}
