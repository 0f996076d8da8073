//! Hostile and ambiguous HTTP traffic through the real binary: each case
//! sends the exact bytes (raw TCP for HTTP/1, hyper's HTTP/2 client for
//! what only HTTP/2 can say) and checks what the backends received.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::library::{Pki, metric, tls_connect, tls_list};
use support::{Backend, Geolb, eventually, raw, status_of};

const LIMIT: Duration = Duration::from_secs(5);

fn config(body: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\nshutdown_grace = \"5s\"\n\n{body}")
}

/// Pools "pa" (the default) and "pb" (for host b.example), listener "web".
async fn two_pools(extra_listener: &str) -> (Backend, Backend, Geolb) {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = config(&format!(
        "[[pool]]\nname = \"pa\"\nbackends = [{{ addr = \"{}\" }}]\n\
         [[pool]]\nname = \"pb\"\nbackends = [{{ addr = \"{}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"pa\"\n\
         routes = [{{ host = \"b.example\", pool = \"pb\" }}]\n{extra_listener}\n",
        a.addr, b.addr
    ));
    let geolb = Geolb::start(&cfg).await;
    (a, b, geolb)
}

/// The body of a raw response (after the head), de-chunked if need be.
fn body_of(resp: &str) -> String {
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// One HTTP/2 request (prior knowledge, cleartext) on a fresh connection:
/// the status and body. `uri` in origin-form sends no `:authority`.
async fn h2(addr: SocketAddr, uri: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = http::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = h2_send(addr, req.body(Empty::<Bytes>::new()).unwrap()).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `req` over HTTP/2 (prior knowledge, cleartext) on a fresh connection.
async fn h2_send<B>(
    addr: SocketAddr,
    req: http::Request<B>,
) -> http::Response<hyper::body::Incoming>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    support::bounded(LIMIT, "h2 request", sender.send_request(req))
        .await
        .unwrap()
}

/// Requests whose authority is refused (400, not forwarded): no `Host`,
/// more than one, and `Host` values or targets that are not
/// `host[:port]`, some of them close to the valid `b.example`.
const REFUSED_HOSTS: &[(&str, &[u8])] = &[
    ("no host, HTTP/1.1", b"GET /headers HTTP/1.1\r\n\r\n"),
    (
        "two hosts",
        b"GET /headers HTTP/1.1\r\nHost: b.example\r\nHost: a.example\r\n\r\n",
    ),
    (
        "the same host twice",
        b"GET /headers HTTP/1.1\r\nHost: b.example\r\nHost: b.example\r\n\r\n",
    ),
    (
        "a list",
        b"GET /headers HTTP/1.1\r\nHost: b.example, a.example\r\n\r\n",
    ),
    ("x, y", b"GET /headers HTTP/1.1\r\nHost: x, y\r\n\r\n"),
    ("a path", b"GET /headers HTTP/1.1\r\nHost: a/evil x\r\n\r\n"),
    (
        "user info",
        b"GET /headers HTTP/1.1\r\nHost: evil@h\r\n\r\n",
    ),
    (
        "the host and more",
        b"GET /headers HTTP/1.1\r\nHost: b.example@h\r\n\r\n",
    ),
    ("empty", b"GET /headers HTTP/1.1\r\nHost: \r\n\r\n"),
    (
        "bad host beside an absolute-form target",
        b"GET http://b.example/headers HTTP/1.1\r\nHost: evil@h\r\n\r\n",
    ),
    (
        "user info in an absolute-form target",
        b"GET http://evil@b.example/headers HTTP/1.1\r\nHost: b.example\r\n\r\n",
    ),
];

#[tokio::test]
async fn host_is_one_valid_authority_and_the_target_authority_wins() {
    let (a, b, geolb) = two_pools("").await;
    let web = geolb.listener("web");
    for (what, bytes) in REFUSED_HOSTS {
        let resp = raw(web, bytes, LIMIT).await;
        assert_eq!(status_of(&resp), 400, "{what}: {resp}");
        assert!(
            resp.to_ascii_lowercase().contains("connection: close"),
            "{what}: {resp}"
        );
    }
    assert_eq!(
        (a.hits(), b.hits()),
        (0, 0),
        "a refused request was forwarded"
    );

    // HTTP/1.0 needs no Host: the listener's default pool.
    let resp = raw(web, b"GET /headers HTTP/1.0\r\n\r\n", LIMIT).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(!body_of(&resp).contains("host:"), "{resp}");
    assert_eq!(a.hits(), 1);

    // Absolute-form: the target's authority wins over Host, for the route
    // and for what the backend receives.
    let resp = raw(
        web,
        b"GET http://b.example/headers HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        LIMIT,
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = body_of(&resp);
    assert!(seen.contains("host: b.example\n"), "{seen}");
    assert!(!seen.contains("a.example"), "{seen}");
    assert_eq!(b.hits(), 1);

    // HTTP/2: `:authority` wins over `host`; `host` alone routes; neither
    // is refused.
    let (code, seen) = h2(web, "http://b.example/headers", &[("host", "a.example")]).await;
    assert_eq!(code, 200, "{seen}");
    assert!(seen.contains("host: b.example\n"), "{seen}");
    assert!(!seen.contains("a.example"), "{seen}");
    assert_eq!(b.hits(), 2);
    let (code, seen) = h2(web, "/headers", &[("host", "b.example")]).await;
    assert_eq!(code, 200, "{seen}");
    assert!(seen.contains("host: b.example\n"), "{seen}");
    assert_eq!(b.hits(), 3);
    let (code, seen) = h2(web, "/headers", &[]).await;
    assert_eq!(code, 400, "{seen}");
    let (code, seen) = h2(web, "http://b.example/headers", &[("host", "evil@h")]).await;
    assert_eq!(code, 400, "{seen}");
    assert_eq!((a.hits(), b.hits()), (1, 3));
}

/// A connection keeps the last `Host` it found valid, so as not to check
/// the same again on its next request: a different one, sent on the same
/// connection after a valid request, is still checked.
#[tokio::test]
async fn a_host_kept_from_a_valid_request_lets_no_other_pass() {
    let (a, b, geolb) = two_pools("").await;
    let web = geolb.listener("web");
    for (what, bytes) in REFUSED_HOSTS {
        let mut pipelined = b"GET /headers HTTP/1.1\r\nHost: b.example\r\n\r\n".to_vec();
        pipelined.extend_from_slice(bytes);
        let resp = raw(web, &pipelined, LIMIT).await;
        let statuses: Vec<u16> = resp
            .match_indices("HTTP/1.1 ")
            .map(|(at, _)| status_of(&resp[at..]))
            .collect();
        assert_eq!(
            statuses,
            [200, 400],
            "{what}, after a valid request: {resp}"
        );
    }
    assert_eq!(
        (a.hits(), b.hits()),
        (0, REFUSED_HOSTS.len()),
        "only the valid requests went on"
    );
}

#[tokio::test]
async fn an_h2c_upgrade_goes_on_as_a_plain_request_and_websocket_still_upgrades() {
    let (a, _b, geolb) = two_pools("").await;
    let web = geolb.listener("web");
    for request in [
        &b"GET /headers HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"[..],
        // HTTP2-Settings not named in Connection, h2c among other protocols.
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nConnection: upgrade\r\nUpgrade: websocket, h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ] {
        // The connection stays open after a plain answer: read its head and
        // body, then check that it still serves plain HTTP/1.1.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(web).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("x-forwarded-proto") {
            let n = support::bounded(LIMIT, "response", s.read(&mut buf))
                .await
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let resp = String::from_utf8_lossy(&got).into_owned();
        assert_eq!(status_of(&resp), 200, "{resp}");
        let seen = resp.to_ascii_lowercase();
        for gone in ["upgrade", "http2-settings", "connection:"] {
            assert!(!seen.contains(gone), "{gone} reached the backend: {resp}");
        }
        // No tunnel: the next bytes are an HTTP/1.1 request, not HTTP/2.
        s.write_all(b"GET /second HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        support::bounded(LIMIT, "second response", s.read_to_end(&mut rest))
            .await
            .unwrap();
        let rest = String::from_utf8_lossy(&rest);
        assert_eq!(status_of(&rest), 200, "{rest}");
        assert!(rest.ends_with("\r\n\r\na"), "{rest}");
    }
    assert_eq!(a.hits(), 4);

    // A WebSocket-style upgrade is still tunnelled.
    let resp = raw(
        web,
        b"GET /ws HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nping",
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(status_of(&resp), 101, "{resp}");
    assert!(resp.ends_with("\r\n\r\nping"), "{resp}");
}

#[tokio::test]
async fn connect_is_answered_405_and_never_forwarded() {
    let (a, b, geolb) = two_pools("").await;
    let web = geolb.listener("web");
    for request in [
        &b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n"[..],
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: a.example\r\n\r\nSSH-2.0-x\r\n",
    ] {
        let resp = raw(web, request, LIMIT).await;
        assert_eq!(status_of(&resp), 405, "{resp}");
        let lower = resp.to_ascii_lowercase();
        assert!(lower.contains("\r\nallow: get, "), "{resp}");
        assert!(!lower.contains("allow: connect") && !lower.contains(", connect"));
        assert!(lower.contains("connection: close"), "{resp}");
    }

    // HTTP/2 CONNECT (authority only, no :scheme or :path).
    let req = http::Request::connect("b.example:443")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = h2_send(web, req).await;
    assert_eq!(resp.status(), 405);
    assert_eq!((a.hits(), b.hits()), (0, 0), "CONNECT was forwarded");
}

/// Sends `bytes` while reading the answer (a peer that stops reading and
/// closes must not fail the test): what came back before the close.
async fn raw_flood(addr: SocketAddr, bytes: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(LIMIT, rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    drop(writer.await);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_huge_request_line_gets_414_and_huge_headers_431() {
    let (a, _b, geolb) = two_pools("").await;
    let web = geolb.listener("web");
    let mut line = b"GET /".to_vec();
    line.extend(std::iter::repeat_n(b'a', 1 << 20));
    line.extend_from_slice(b" HTTP/1.1\r\nHost: a.example\r\n\r\n");
    let resp = raw_flood(web, line).await;
    assert_eq!(status_of(&resp), 414, "{resp}");
    assert!(resp.to_ascii_lowercase().contains("connection: close"));

    // The same on a keep-alive connection after a first request.
    let mut two = b"GET /first HTTP/1.1\r\nHost: a.example\r\n\r\n".to_vec();
    two.extend_from_slice(b"GET /?q=");
    two.extend(std::iter::repeat_n(b'b', 200_000));
    let resp = raw_flood(web, two).await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        resp.contains("\r\n\r\naHTTP/1.1 414 URI Too Long\r\n"),
        "{resp}"
    );

    // Large headers after a short line stay 431; a long line that fits
    // is forwarded.
    let mut big = b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1 << 20));
    big.extend_from_slice(b"\r\n\r\n");
    let resp = raw_flood(web, big).await;
    assert_eq!(status_of(&resp), 431, "{resp}");
    let hits = a.hits();
    let fits = format!(
        "GET /{} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        "c".repeat(40_000)
    );
    let resp = raw_flood(web, fits.into_bytes()).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(a.hits(), hits + 1);
}

/// A backend that answers every request head it reads with `response`,
/// byte for byte, keeping the connection open.
async fn raw_backend(response: &'static [u8]) -> SocketAddr {
    recording_backend(response).await.0
}

/// [`raw_backend`], keeping the request line of each head it reads.
async fn recording_backend(response: &'static [u8]) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let record = lines.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                        let line = head.lines().next().unwrap_or("").to_owned();
                        record.lock().unwrap().push(line);
                        seen.drain(..end + 4);
                        if s.write_all(response).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, lines)
}

fn one_pool(addr: SocketAddr, extra_listener: &str) -> String {
    config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{addr}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n{extra_listener}\n"
    ))
}

#[tokio::test]
async fn a_response_with_length_and_chunked_is_refused_or_relayed_by_its_chunks() {
    let backend = raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
          b\r\nhello world\r\n6\r\n, all.\r\n0\r\n\r\n",
    )
    .await;
    let get = b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    // geolb's own client (the default) takes it for the smuggling attempt
    // it may be (RFC 9112 §6.3), as nginx does: 502, nothing forwarded.
    let geolb = Geolb::start(&one_pool(backend, "")).await;
    let resp = raw(geolb.listener("web"), get, LIMIT).await;
    assert_eq!(status_of(&resp), 502, "{resp}");
    assert!(!resp.contains("hello"), "{resp}");
    drop(geolb);

    // hyper's client relays it by its chunks alone, as HAProxy does.
    let hyper =
        one_pool(backend, "").replace("backends = [", "http1_client = \"hyper\"\nbackends = [");
    let geolb = Geolb::start(&hyper).await;
    let web = geolb.listener("web");
    let resp = raw(web, get, LIMIT).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(
        !resp.to_ascii_lowercase().contains("content-length: 5"),
        "{resp}"
    );
    assert_eq!(body_of(&resp), "hello world, all.", "{resp}");

    // The same over HTTP/2, where only the length could say where it ends.
    let (code, body) = h2(web, "http://a.example/", &[]).await;
    assert_eq!((code, body.as_str()), (200, "hello world, all."));
}

#[tokio::test]
async fn split_http2_cookies_reach_an_http1_backend_as_one_line() {
    let (_a, b, geolb) = two_pools("").await;
    let web = geolb.listener("web");
    let (code, seen) = h2(
        web,
        "http://b.example/headers",
        &[("cookie", "session=abc"), ("cookie", "theme=dark; lang=en")],
    )
    .await;
    assert_eq!(code, 200, "{seen}");
    assert_eq!(b.hits(), 1);
    let cookies: Vec<&str> = seen.lines().filter(|l| l.starts_with("cookie:")).collect();
    assert_eq!(
        cookies,
        ["cookie: session=abc; theme=dark; lang=en"],
        "{seen}"
    );
}

#[tokio::test]
async fn a_bad_or_slow_request_body_is_the_clients_fault() {
    let (a, _b, geolb) = two_pools("timeouts = { request = \"500ms\" }\nretries = 0").await;
    let web = geolb.listener("web");
    // A chunk size that is not hex, after a good chunk.
    let resp = raw(
        web,
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n",
        LIMIT,
    )
    .await;
    assert_eq!(status_of(&resp), 400, "{resp}");
    assert!(resp.contains("request body"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("connection: close"));

    // Ten bytes of a hundred, then nothing: 408 after timeouts.request.
    for head in [
        &b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 100\r\n\r\n0123456789"[..],
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
    ] {
        let start = std::time::Instant::now();
        let resp = raw(web, head, LIMIT).await;
        assert_eq!(status_of(&resp), 408, "{resp}");
        assert!(resp.contains("did not arrive within"), "{resp}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }
    // The two slow requests reached the backend. Whether (and when) the
    // malformed one's head did depends on whether geolb's client flushed
    // it before reading the bad chunk, so it may count or not.
    let hits = a.hits();
    assert!(
        (2..=3).contains(&hits),
        "the slow requests reached the backend: {hits}"
    );

    // A backend that is slow with a whole body is still the backend's fault.
    let resp = raw(
        web,
        b"POST /slow?ms=2000 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        LIMIT,
    )
    .await;
    assert_eq!(status_of(&resp), 504, "{resp}");

    // Lines reach the log from geolb's writer thread, maybe after the
    // answer reached the client.
    eventually("the slow backend's warning in the log", LIMIT, || async {
        geolb.log().contains("request failed")
    })
    .await;
    let log = geolb.log();
    let warned = log.lines().filter(|l| l.contains("request failed")).count();
    assert_eq!(warned, 1, "only the slow backend is blamed:\n{log}");
    let metrics = geolb.metrics().await;
    for code in ["400", "408", "504"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("geolb_http_requests_total")
                    && l.contains(&format!("code=\"{code}\""))),
            "no {code} counted:\n{metrics}"
        );
    }
    assert!(!metrics.contains("code=\"502\""), "{metrics}");
}

#[tokio::test]
async fn dot_segments_are_refused_not_routed_by_their_prefix() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = config(&format!(
        "[[pool]]\nname = \"admin\"\nbackends = [{{ addr = \"{}\" }}]\n\
         [[pool]]\nname = \"public\"\nbackends = [{{ addr = \"{}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"admin\"\n\
         routes = [{{ path_prefix = \"/public/\", pool = \"public\" }}]\n",
        a.addr, b.addr
    ));
    let geolb = Geolb::start(&cfg).await;
    let web = geolb.listener("web");
    for path in [
        "/public/../admin",
        "/public/./../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin",
        "/public/.%2e/admin",
        "/public/..%2fadmin",
        "/public/..%5Cadmin",
        "/public/..;/admin",
        "/public/..",
        "/%2e%2e/admin",
        "/%2E./admin",
        "/public/%2e%2e/admin",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a.example\r\n\r\n");
        let resp = raw(web, request.as_bytes(), LIMIT).await;
        assert_eq!(status_of(&resp), 400, "{path}: {resp}");
        assert!(resp.contains("dot segment"), "{path}: {resp}");
    }
    let (code, body) = h2(web, "http://a.example/public/%2e%2e/admin", &[]).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!((a.hits(), b.hits()), (0, 0), "a dot segment was forwarded");

    // Dots inside names are no dot segments.
    for path in ["/public/.well-known/x", "/public/a..b", "/public/v1.2/..."] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
        let resp = raw(web, request.as_bytes(), LIMIT).await;
        assert_eq!(status_of(&resp), 200, "{path}: {resp}");
        assert!(resp.ends_with("\r\n\r\nb"), "{path}: {resp}");
    }
}

/// A TLS ClientHello (in records of at most 16 KiB) whose SNI is
/// `name_len` bytes of `a`: no valid host name can be that long.
fn hello_with_sni(name_len: usize) -> Vec<u8> {
    let u16_be = |n: usize| u16::try_from(n).unwrap().to_be_bytes();
    let mut sni = u16_be(3 + name_len).to_vec();
    sni.push(0); // host_name
    sni.extend(u16_be(name_len));
    sni.extend(std::iter::repeat_n(b'a', name_len));
    let mut extensions = vec![0, 0]; // server_name
    extensions.extend(u16_be(sni.len()));
    extensions.extend(sni);
    let mut body = vec![3, 3]; // TLS 1.2, as TLS 1.3 hellos say too
    body.extend([7; 32]); // random
    body.push(0); // no session id
    body.extend([0, 4, 0x13, 0x01, 0xc0, 0x2f]); // two cipher suites
    body.extend([1, 0]); // null compression
    body.extend(u16_be(extensions.len()));
    body.extend(extensions);
    let mut handshake = vec![1]; // client_hello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut records = Vec::new();
    for fragment in handshake.chunks(16 * 1024) {
        records.extend([22, 3, 1]);
        records.extend(u16_be(fragment.len()));
        records.extend(fragment);
    }
    records
}

/// Sends `bytes` as the start of a TLS connection and waits until the
/// server closes it.
async fn bad_handshake(addr: SocketAddr, bytes: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may close before it has read everything: not a failure.
    let _ = s.write_all(bytes).await;
    let mut sink = Vec::new();
    let _ = support::bounded(LIMIT, "the server to close", s.read_to_end(&mut sink)).await;
}

/// The failures the lines of `log` that contain `what` account for: each
/// line one, plus the `suppressed=N` it counts.
fn accounted_for(log: &str, what: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(what))
        .map(|l| {
            let suppressed = l.split("suppressed=").nth(1).and_then(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
            1 + suppressed.unwrap_or(0)
        })
        .sum()
}

#[tokio::test]
async fn bad_handshakes_are_each_counted_and_logged_once_a_second_without_the_sni() {
    let pki = Pki::new();
    let leaf = pki.leaf("web", &["a.example"]);
    let a = Backend::start("a").await;
    let cfg = config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{}\" }}]\n\
         [[listener]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n\
         pool = \"p\"\n{}\n",
        a.addr,
        tls_list(&[&leaf])
    ));
    // The default log filter, as in production.
    let geolb = Geolb::start_default_log(&cfg).await;
    let secure = geolb.listener("secure");
    let before = geolb.log().len();
    let hello = hello_with_sni(60_000);
    let garbage = b"\x16\x03\x01\x00\x08garbage!GET / HTTP/1.1\r\n\r\n";
    for i in 0..200 {
        let bytes: &[u8] = if i % 10 == 9 { garbage } else { &hello };
        bad_handshake(secure, bytes).await;
    }
    // A loud line comes at most once a second and counts those left out
    // since the one before: one more failure after a second accounts for
    // all 200.
    let (log, hello) = (&geolb, &hello);
    eventually("lines accounting for every failure", LIMIT, || async move {
        bad_handshake(secure, hello).await;
        accounted_for(&log.log(), "TLS handshake failed") > 200
    })
    .await;

    let log = geolb.log();
    let grown = log.len() - before;
    assert!(grown < 20_000, "{grown} bytes logged:\n{log}");
    assert!(
        !log.contains(&"a".repeat(300)),
        "the SNI was logged:\n{log}"
    );
    let lines = log.matches("TLS handshake failed").count();
    assert!(lines < 20, "{lines} lines:\n{log}");
    let metrics = geolb.metrics().await;
    let failed = metric(
        &metrics,
        "geolb_tls_handshake_errors_total",
        &[("listener", "secure")],
    );
    assert!(failed.is_some_and(|n| n >= 201.0), "{failed:?}\n{metrics}");

    // Real clients are still served.
    let tls = tls_connect(&pki.client(&[b"http/1.1"]), secure, "a.example").await;
    assert!(tls.is_ok(), "{tls:?}");
}

/// A keep-alive connection that has had one answer from `addr` (the
/// backend `a` answers "a").
async fn served_connection(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let answer = ask(&mut s, LIMIT).await;
    assert!(answer.is_some_and(|r| r.ends_with("\r\n\r\na")));
    s
}

/// Sends a GET on `s` and reads its answer (up to the body "a"), or
/// `None` if none came within `limit`.
async fn ask(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    use tokio::io::AsyncWriteExt;
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    read_answer(s, limit).await
}

/// Reads an answer already asked for (see [`ask`]).
async fn read_answer(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while !got.ends_with(b"\r\n\r\na") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            Ok(_) => panic!("closed: {}", String::from_utf8_lossy(&got)),
            Err(_) => return None,
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// `geolb_listener_connections` and `..._limited_total` of listener `name`.
async fn listener_series(geolb: &Geolb, name: &str) -> (f64, f64) {
    let metrics = geolb.metrics().await;
    let labels = [("listener", name)];
    let open = metric(&metrics, "geolb_listener_connections", &labels);
    let limited = metric(
        &metrics,
        "geolb_listener_connections_limited_total",
        &labels,
    );
    match (open, limited) {
        (Some(o), Some(l)) => (o, l),
        _ => panic!("no series for listener {name}:\n{metrics}"),
    }
}

#[tokio::test]
async fn max_connections_holds_new_connections_in_the_backlog_until_one_closes() {
    let (_a, _b, geolb) = two_pools("max_connections = 2").await;
    let web = geolb.listener("web");
    // Both series exist from the start.
    assert_eq!(listener_series(&geolb, "web").await, (0.0, 0.0));

    let first = served_connection(web).await;
    let mut second = served_connection(web).await;
    eventually("two connections open", LIMIT, || async {
        listener_series(&geolb, "web").await.0 == 2.0
    })
    .await;

    // The third connects (the kernel completes the handshake) but is not
    // accepted: no answer while the two stay open.
    let mut third = tokio::net::TcpStream::connect(web).await.unwrap();
    assert_eq!(ask(&mut third, Duration::from_millis(700)).await, None);
    let (open, limited) = listener_series(&geolb, "web").await;
    assert_eq!(open, 2.0);
    assert!(limited >= 1.0, "{limited}");

    // One closes: the third is accepted and answered.
    drop(first);
    let answer = read_answer(&mut third, LIMIT).await;
    assert!(answer.is_some_and(|r| r.starts_with("HTTP/1.1 200")));
    assert!(ask(&mut second, LIMIT).await.is_some());

    // A reload raising the limit lets a fourth in beside the two.
    let raised = std::fs::read_to_string(geolb.config_path())
        .unwrap()
        .replace("max_connections = 2", "max_connections = 3");
    geolb.write_config(&raised).unwrap();
    let (code, _, body) = support::request(geolb.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let mut fourth = tokio::net::TcpStream::connect(web).await.unwrap();
    assert!(ask(&mut fourth, LIMIT).await.is_some());
    eventually("three connections open", LIMIT, || async {
        listener_series(&geolb, "web").await.0 == 3.0
    })
    .await;

    drop((second, third, fourth));
    eventually("every slot freed", LIMIT, || async {
        listener_series(&geolb, "web").await.0 == 0.0
    })
    .await;
    support::library::promtool_check(&geolb.metrics().await);
}

#[tokio::test]
async fn an_upgraded_tunnel_keeps_its_connection_slot_until_it_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_a, _b, geolb) = two_pools("max_connections = 1").await;
    let web = geolb.listener("web");
    let mut tunnel = tokio::net::TcpStream::connect(web).await.unwrap();
    tunnel
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n\r\n") {
        let n = support::bounded(LIMIT, "101", tunnel.read(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(status_of(&String::from_utf8_lossy(&got)), 101);
    tunnel.write_all(b"ping").await.unwrap();
    let n = support::bounded(LIMIT, "echo", tunnel.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"ping");

    // The HTTP connection has handed over to the tunnel: still one slot.
    let mut next = tokio::net::TcpStream::connect(web).await.unwrap();
    assert_eq!(ask(&mut next, Duration::from_millis(500)).await, None);
    drop(tunnel);
    assert!(read_answer(&mut next, LIMIT).await.is_some());
}

#[tokio::test]
async fn encoded_letters_route_as_letters_and_the_backend_gets_the_routed_path() {
    let admin = Backend::start("admin").await;
    let (public, lines) =
        recording_backend(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let cfg = config(&format!(
        "[[pool]]\nname = \"admin\"\nbackends = [{{ addr = \"{}\" }}]\n\
         [[pool]]\nname = \"public\"\nbackends = [{{ addr = \"{public}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"admin\"\n\
         routes = [{{ path_prefix = \"/public/\", pool = \"public\" }}]\n",
        admin.addr
    ));
    let geolb = Geolb::start(&cfg).await;
    let web = geolb.listener("web");
    // What was sent, and the request line the public pool must receive.
    let cases = [
        ("/%70ublic/x", "/public/x"),
        ("/%70%75%62%6C%69%63/x?q=%70", "/public/x?q=%70"),
        ("/public/%7Euser/%41", "/public/~user/A"),
        // Reserved characters keep their encoding: a%2Fb is one segment.
        ("/public/a%2Fb", "/public/a%2Fb"),
    ];
    for (sent, _) in cases {
        let request =
            format!("GET {sent} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
        let resp = raw(web, request.as_bytes(), LIMIT).await;
        assert_eq!(status_of(&resp), 200, "{sent}: {resp}");
        assert!(
            resp.ends_with("ok"),
            "{sent} went to the admin pool: {resp}"
        );
    }
    let (code, _) = h2(web, "http://a.example/%70ublic/h2", &[]).await;
    assert_eq!(code, 200);
    let got = lines.lock().unwrap().clone();
    let mut want: Vec<String> = cases
        .iter()
        .map(|(_, path)| format!("GET {path} HTTP/1.1"))
        .collect();
    want.push("GET /public/h2 HTTP/1.1".into());
    assert_eq!(got, want);
    assert_eq!(admin.hits(), 0);
}

#[tokio::test]
async fn a_body_on_a_get_is_forwarded() {
    let (a, _b, geolb) = two_pools("").await;
    let web = geolb.listener("web");
    // HTTP/1.1 with Content-Length, then chunked; /upload answers the
    // number of body bytes it read.
    let sized = "GET /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let resp = raw(web, sized.as_bytes(), LIMIT).await;
    assert_eq!(
        (status_of(&resp), body_of(&resp).as_str()),
        (200, "5"),
        "{resp}"
    );
    let chunked = "GET /upload HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n4\r\nlo!!\r\n0\r\n\r\n";
    let resp = raw(web, chunked.as_bytes(), LIMIT).await;
    assert_eq!(
        (status_of(&resp), body_of(&resp).as_str()),
        (200, "7"),
        "{resp}"
    );
    // HTTP/2: DATA frames on a GET stream.
    let req = http::Request::get("http://a.example/upload")
        .body(http_body_util::Full::new(Bytes::from_static(b"0123456789")))
        .unwrap();
    let resp = h2_send(web, req).await;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"10");
    assert_eq!(a.hits(), 3);
}

/// A backend that reads a request's head, answers `response` at once
/// without reading its body, then closes (`close`) or reads on until the
/// client side ends.
async fn answers_before_the_body(
    response: &'static [u8],
    close: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tls = tls.clone();
            // As web servers do. Without it, over TLS the answer could wait
            // (Nagle) behind the unacknowledged session tickets and be
            // thrown away with the unsent rest when the close resets the
            // connection: the answer never left the backend.
            if s.set_nodelay(true).is_err() {
                continue;
            }
            tokio::spawn(async move {
                let mut s: Box<dyn Io> = match tls {
                    Some(tls) => match tls.accept(s).await {
                        Ok(s) => Box::new(s),
                        Err(_) => return,
                    },
                    None => Box::new(s),
                };
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                // Flushed: a TLS stream may still hold what it was given.
                if s.write_all(response).await.is_err() || s.flush().await.is_err() || close {
                    return;
                }
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// A backend's early answer to an upload reaches the client through each
/// HTTP/1.1 client (geolb's own, hyper's, hyper's over TLS), whether the
/// backend then closes (its kernel resets the connection on the upload's
/// next bytes) or reads the rest. hyper's failed the request at its next
/// write of the body: a 502. A backend gone with no answer is a 502
/// through each.
#[tokio::test]
async fn an_answer_before_the_upload_ends_reaches_the_client() {
    let mut upload =
        b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 8388608\r\n\r\n".to_vec();
    upload.extend(std::iter::repeat_n(b'u', 8 << 20));
    for (response, close, want) in [
        (
            &b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!"[..],
            true,
            413,
        ),
        (
            &b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nwho?"[..],
            false,
            401,
        ),
        // Closed without saying so: the connection must not be kept.
        (
            &b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nno!!"[..],
            true,
            403,
        ),
        // Gone without an answer: a 502, the upload read or not.
        (&b""[..], true, 502),
    ] {
        let pki = Pki::new();
        let leaf = pki.leaf("backend", &["127.0.0.1"]);
        let plain = answers_before_the_body(response, close, None).await;
        let tls = answers_before_the_body(response, close, Some(pki.acceptor(&leaf))).await;
        for (client, backend) in [("geolb", plain), ("hyper", plain), ("tls", tls)] {
            let key = match client {
                "tls" => "tls = { verify = false }".to_owned(),
                _ => format!("http1_client = \"{client}\""),
            };
            let cfg = one_pool(backend, "").replace("backends = [", &format!("{key}\nbackends = ["));
            let geolb = Geolb::start(&cfg).await;
            let web = geolb.listener("web");
            let resp = raw_flood(web, upload.clone()).await;
            assert_eq!(status_of(&resp), want, "{client} client, {want}: {resp}");
            // The next request finds a live backend connection, not the
            // reset one.
            let get = b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
            let next = raw(web, get, LIMIT).await;
            assert_eq!(status_of(&next), want, "{client} client, next request: {next}");
            if want != 502 {
                let body = std::str::from_utf8(&response[response.len() - 4..]).unwrap();
                assert_eq!(body_of(&resp), body, "{client}: {resp}");
            }
        }
    }
}

/// A test backend's stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Writes all of `bytes`, then reads the answer to its end, as clients
/// that read nothing before their request is sent do (Python's
/// `http.client`, many SDKs): an error if the write is refused.
async fn send_then_read<S>(mut stream: S, bytes: &[u8]) -> std::io::Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    support::bounded(LIMIT, "the request written", stream.write_all(bytes)).await?;
    let mut out = Vec::new();
    support::bounded(LIMIT, "the answer read", stream.read_to_end(&mut out)).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// An answer geolb gives before the request is all read (a 413 by
/// `Content-Length`, a backend's early 413, a 414 to a line too long)
/// reaches a client that sends its whole request before reading, over
/// TCP and TLS: geolb closes its side and reads the rest (a lingering
/// close, as nginx's) instead of closing at once, whose reset failed the
/// client's writes (a broken pipe, and no answer).
#[tokio::test]
async fn a_client_that_sends_its_whole_upload_before_reading_gets_the_early_answer() {
    let pki = Pki::new();
    let leaf = pki.leaf("web", &["a.example"]);
    let early = answers_before_the_body(
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!",
        true,
        None,
    )
    .await;
    let a = Backend::start("a").await;
    let cfg = config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{}\" }}]\n\
         [[pool]]\nname = \"early\"\nbackends = [{{ addr = \"{early}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         max_body = \"1MiB\"\nroutes = [{{ path_prefix = \"/early\", pool = \"early\" }}]\n\
         [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         http1_server = \"hyper\"\nmax_body = \"1MiB\"\n\
         routes = [{{ path_prefix = \"/early\", pool = \"early\" }}]\n\
         [[listener]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n\
         pool = \"p\"\nmax_body = \"1MiB\"\n{tls}\n\
         [[listener]]\nname = \"secure-hyper\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n\
         pool = \"p\"\nhttp1_server = \"hyper\"\nmax_body = \"1MiB\"\n{tls}\n",
        a.addr,
        tls = tls_list(&[&leaf])
    ));
    let geolb = Geolb::start(&cfg).await;
    let upload = |path: &str| {
        let mut bytes =
            format!("POST {path} HTTP/1.1\r\nHost: a.example\r\nContent-Length: 8388608\r\n\r\n")
                .into_bytes();
        bytes.extend(std::iter::repeat_n(b'u', 8 << 20));
        bytes
    };
    let mut line = b"GET /".to_vec();
    line.extend(std::iter::repeat_n(b'a', 8 << 20));
    line.extend_from_slice(b" HTTP/1.1\r\nHost: a.example\r\n\r\n");
    for server in ["web", "hyper"] {
        for (what, bytes, want) in [
            ("max_body", upload("/up"), 413),
            ("the backend's early answer", upload("/early"), 413),
            ("a line too long", line.clone(), 414),
        ] {
            let tcp = tokio::net::TcpStream::connect(geolb.listener(server))
                .await
                .unwrap();
            let resp = send_then_read(tcp, &bytes).await;
            let resp = resp.unwrap_or_else(|e| panic!("{server}, {what}: the upload failed: {e}"));
            assert_eq!(status_of(&resp), want, "{server}, {what}: {resp}");
        }
    }
    let client = pki.client(&[b"http/1.1"]);
    for server in ["secure", "secure-hyper"] {
        let tls = tls_connect(&client, geolb.listener(server), "a.example")
            .await
            .unwrap();
        let resp = send_then_read(tls, &upload("/up")).await;
        let resp = resp.unwrap_or_else(|e| panic!("{server}: the upload failed: {e}"));
        assert_eq!(status_of(&resp), 413, "{server}: {resp}");
    }
    assert_eq!(a.hits(), 0, "nothing was forwarded");
}

/// A lingering close ends: when the client stops sending (after the
/// listener's `idle` timeout, when under 5 s), when it closes, when it
/// goes on past the `idle` timeout (under 30 s), and when geolb stops;
/// through geolb's HTTP/1 server and hyper's.
#[tokio::test]
async fn a_lingering_close_ends_when_the_client_is_quiet_or_sends_too_long_or_geolb_stops() {
    let a = Backend::start("a").await;
    for server in ["geolb", "hyper"] {
        lingering_close_ends(a.addr, server).await;
    }
}

/// [`a_lingering_close_ends_when_the_client_is_quiet_or_sends_too_long_or_geolb_stops`]
/// through `http1_server = "{server}"`. The clients send 256 KiB of body
/// or more: hyper's server lingers when its client's bytes are still
/// coming as it shuts the connection down, and hyper reads up to 64 KiB
/// ahead.
async fn lingering_close_ends(backend: SocketAddr, server: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = |idle: &str| {
        format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
             http1_server = \"{server}\"\nmax_body = \"1KiB\"\n\
             timeouts = {{ idle = \"{idle}\" }}\n"
        )
    };
    let pool = format!("[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{backend}\" }}]\n");
    let head = b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1073741824\r\n\r\n";
    let part = vec![b'u'; 256 * 1024];
    let geolb = Geolb::start(&config(&(pool.clone() + &listener("1s")))).await;
    let web = geolb.listener("web");
    let log = &geolb;
    let ended_by = |reasons: &'static [&'static str]| async move {
        eventually(reasons[0], LIMIT, || async {
            let log = log.log();
            reasons
                .iter()
                .any(|r| log.contains(&format!("reason=\"{r}\"")))
        })
        .await;
    };
    let ended = |reason: &'static str| async move {
        let line = format!("reason=\"{reason}\"");
        eventually(reason, LIMIT, || async { log.log().contains(&line) }).await;
    };

    // Quiet: a part of the body, then nothing, the connection left open.
    // The answer and geolb's end of sending come at once; geolb reads on.
    // With `idle` at 1 s the quiet wait and the whole one are both 1 s:
    // a byte of the part read after the lingering began (a loaded
    // machine) makes it end as the whole wait, at the same time
    // (`proxy::linger`'s tests tell the two apart with time paused).
    let mut quiet = answered_early(web, head, &part, server).await;
    let answered = std::time::Instant::now();
    ended_by(&["the client was quiet", "lingered long enough"]).await;
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "{server}: lingered for the idle timeout: {waited:?}"
    );
    // Bytes sent now find the connection closed.
    let cut = async {
        while quiet.write_all(&[b'u'; 1024]).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    support::bounded(LIMIT, "the connection reset", cut).await;

    // A client that closes once answered ends it there.
    drop(answered_early(web, head, &part, server).await);
    ended("the client closed").await;

    // Endless: the client sends on, 16 KiB every 10 ms (its next bytes
    // not always there as the answer goes out); geolb reads it for the
    // idle timeout.
    let endless = tokio::net::TcpStream::connect(web).await.unwrap();
    let (mut rd, mut wr) = endless.into_split();
    let sender = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let chunk = vec![b'u'; 16 * 1024];
        let _ = wr.write_all(head).await;
        while started.elapsed() < Duration::from_secs(20) {
            if wr.write_all(&chunk).await.is_err() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    });
    let mut got = Vec::new();
    let _ = support::bounded(LIMIT, "the endless client's end", rd.read_to_end(&mut got)).await;
    assert_eq!(status_of(&String::from_utf8_lossy(&got)), 413, "{server}");
    let cut = sender.await.unwrap().expect("the connection was cut");
    assert!(
        cut >= Duration::from_millis(900),
        "{server}: read for the idle timeout: {cut:?}"
    );
    ended("lingered long enough").await;
    drop(geolb);

    // geolb stopping ends a lingering close at once, not after its
    // shutdown grace (5 s).
    let mut geolb = Geolb::start(&config(&(pool + &listener("60s")))).await;
    let _lingering = answered_early(geolb.listener("web"), head, &part, server).await;
    let took = stopped_in(&mut geolb).await;
    assert!(
        took < Duration::from_secs(3),
        "{server}: geolb took {took:?} to stop"
    );
    assert!(
        geolb.log().contains("reason=\"geolb stops\""),
        "{server}: {}",
        geolb.log()
    );
}

/// Sends `head` and `part` of its body to `web` and reads the answer to
/// the end of geolb's sending: a 413, the connection left open.
async fn answered_early(
    web: SocketAddr,
    head: &[u8],
    part: &[u8],
    server: &str,
) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(web).await.unwrap();
    stream.write_all(head).await.unwrap();
    stream.write_all(part).await.unwrap();
    let mut got = Vec::new();
    let end = support::bounded(LIMIT, "the answer", stream.read_to_end(&mut got));
    end.await.unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&got)), 413, "{server}");
    stream
}

/// A TLS client that stops reading a large answer is cut at the `idle`
/// timeout and its connection let go: the close_notify that ends it waits
/// for room in a socket that client never empties, for at most 5 s (or
/// `idle`), not for ever; and geolb's stop does not wait for it. Through
/// geolb's HTTP/1 server and hyper's.
#[tokio::test]
async fn a_tls_client_that_stops_reading_is_let_go() {
    let pki = Pki::new();
    let leaf = pki.leaf("web", &["a.example"]);
    let mut big = b"HTTP/1.1 200 OK\r\nContent-Length: 33554432\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'b', 32 << 20));
    let backend = raw_backend(big.leak()).await;
    let cfg = config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{backend}\" }}]\n\
         [[listener]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n\
         pool = \"p\"\ntimeouts = {{ idle = \"1s\" }}\n{tls}\n\
         [[listener]]\nname = \"secure-hyper\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n\
         pool = \"p\"\nhttp1_server = \"hyper\"\ntimeouts = {{ idle = \"1s\" }}\n{tls}\n",
        tls = tls_list(&[&leaf])
    ));
    let mut geolb = Geolb::start(&cfg).await;
    let client = pki.client(&[b"http/1.1"]);
    for server in ["secure", "secure-hyper"] {
        let tls = stalled_reader(&client, &geolb, server).await;
        // Cut at 1 s, its close given at most 1 s more; through hyper's,
        // 1 s of GOAWAY grace first and 2 s for a close that may linger.
        let open = &geolb;
        eventually(server, Duration::from_secs(10), || async move {
            listener_series(open, server).await.0 == 0.0
        })
        .await;
        drop(tls);
    }
    let _held = [
        stalled_reader(&client, &geolb, "secure").await,
        stalled_reader(&client, &geolb, "secure-hyper").await,
    ];
    // Both cut, and hyper's closing in its own task (a second of GOAWAY
    // grace later), its close_notify waiting for room.
    let log = &geolb;
    eventually("both cut", LIMIT, || async {
        let log = log.log();
        log.matches("client connection cut").count() >= 4
            && log.matches("closes in a task of its own").count() >= 2
    })
    .await;
    let took = stopped_in(&mut geolb).await;
    assert!(
        took < Duration::from_millis(900),
        "geolb took {took:?} to stop"
    );
}

/// How long `geolb` takes to exit after SIGTERM.
async fn stopped_in(geolb: &mut Geolb) -> Duration {
    let started = std::time::Instant::now();
    geolb.signal("TERM");
    geolb.wait_exit(LIMIT).await;
    started.elapsed()
}

/// A TLS connection to `listener` that asks for a large answer and reads
/// none of it, once `geolb` counts it.
async fn stalled_reader(
    client: &tokio_rustls::TlsConnector,
    geolb: &Geolb,
    listener: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut tls = tls_connect(client, geolb.listener(listener), "a.example")
        .await
        .unwrap();
    tls.write_all(b"GET /big HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    eventually("the connection counted", LIMIT, || async move {
        listener_series(geolb, listener).await.0 == 1.0
    })
    .await;
    tls
}

/// hyper's HTTP/1 server ends a connection whose request line is too
/// long by dropping it, unshut, after its `414`: the connection still
/// closes lingering (the rest of the line is coming, there yet or not),
/// stays counted under its listener until the lingering ends, and is
/// ended at once by geolb's stop.
#[tokio::test]
async fn a_414_of_hypers_server_lingers_and_stays_counted() {
    use tokio::io::AsyncWriteExt;
    let a = Backend::start("a").await;
    let cfg = config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         http1_server = \"hyper\"\ntimeouts = {{ idle = \"4s\" }}\n",
        a.addr
    ));
    let mut geolb = Geolb::start(&cfg).await;
    let mut stream = tokio::net::TcpStream::connect(geolb.listener("web"))
        .await
        .unwrap();
    // More than hyper reads before it answers: the rest is still coming
    // (or in geolb's socket) when the 414 goes out.
    let mut line = b"GET /".to_vec();
    line.extend(std::iter::repeat_n(b'a', 1 << 20));
    let resp = send_then_read(&mut stream, &line).await;
    let resp = resp.expect("the line read on, not reset; then the answer and geolb's end");
    assert_eq!(status_of(&resp), 414, "{resp}");
    assert_eq!(
        listener_series(&geolb, "web").await.0,
        1.0,
        "counted while it lingers"
    );
    // Quiet (or read for as long as it may: both are the `idle` 4 s
    // here, and a loaded machine may still be delivering the line).
    let log = &geolb;
    let over = Duration::from_secs(10);
    eventually("the lingering ended", over, || async {
        log.log().contains("lingering close ended")
    })
    .await;
    eventually("the connection let go", LIMIT, || async move {
        listener_series(log, "web").await.0 == 0.0
    })
    .await;
    drop(stream);

    // A client whose next bytes come only after the answer: none is
    // there as hyper lets the connection go, and it lingers all the same.
    let mut slow = tokio::net::TcpStream::connect(geolb.listener("web"))
        .await
        .unwrap();
    // Just what fills geolb's 64 KiB for a line (its last two bytes left
    // for the CRLF): the 414 comes with all of it read.
    let mut first = b"GET /".to_vec();
    first.extend(std::iter::repeat_n(b'a', 64 * 1024 - 6));
    slow.write_all(&first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = send_then_read(&mut slow, &[b'a'; 1 << 20]).await;
    let resp = resp.expect("the rest read on, not reset; then the answer and geolb's end");
    assert_eq!(status_of(&resp), 414, "{resp}");

    // geolb stopping ends such a lingering close at once (logged), not
    // at the end of its grace.
    let mut held = tokio::net::TcpStream::connect(geolb.listener("web"))
        .await
        .unwrap();
    let resp = send_then_read(&mut held, &first).await.expect("the answer");
    assert_eq!(status_of(&resp), 414, "{resp}");
    let took = stopped_in(&mut geolb).await;
    assert!(took < Duration::from_secs(3), "geolb took {took:?} to stop");
    assert!(
        geolb.log().contains("reason=\"geolb stops\""),
        "{}",
        geolb.log()
    );
}

/// An HTTP/2 backend that answers an upload before reading it (its
/// stream then reset with NO_ERROR, RFC 9113 §8.1) has its answer relayed
/// to an HTTP/1.1 client sending the whole upload before it reads, and
/// its connection keeps serving.
#[tokio::test]
async fn an_h2_backends_early_answer_reaches_the_client() {
    use http_body_util::Full;
    let backend = support::library::TcpBackend::start(|stream| async move {
        let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| {
            let status = match req.method() {
                &hyper::Method::POST => 413,
                _ => 200,
            };
            async move {
                // The request body is dropped unread.
                let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"h2 says")));
                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                Ok::<_, hyper::Error>(resp)
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await;
    let cfg = config(&format!(
        "[[pool]]\nname = \"p\"\nbackend_protocol = \"h2c\"\nbackends = [{{ addr = \"{}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        backend.addr
    ));
    let geolb = Geolb::start(&cfg).await;
    let web = geolb.listener("web");
    let mut upload =
        b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 8388608\r\n\r\n".to_vec();
    upload.extend(std::iter::repeat_n(b'u', 8 << 20));
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(web).await.unwrap();
        let resp = send_then_read(tcp, &upload).await;
        let resp = resp.unwrap_or_else(|e| panic!("the upload failed: {e}"));
        assert_eq!(status_of(&resp), 413, "{resp}");
        assert_eq!(body_of(&resp), "h2 says", "{resp}");
        let get = b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
        let next = raw(web, get, LIMIT).await;
        assert_eq!(status_of(&next), 200, "{next}");
    }
}

/// An HTTP/2 client's upload answered before it ends (`max_body` by its
/// `content-length`): the answer whole, then its stream reset with
/// NO_ERROR (RFC 9113 §8.1: stop sending, keep the answer), as nginx and
/// HAProxy do; the connection goes on serving.
#[tokio::test]
async fn an_h2_upload_answered_early_gets_the_answer_then_no_error() {
    use support::h2::{DATA, H2, HEADERS, frame};
    const RST_STREAM: u8 = 0x3;
    let a = Backend::start("a").await;
    let geolb = Geolb::start(&one_pool(a.addr, "max_body = \"1MiB\"")).await;
    let (mut h2, _) = H2::connect(geolb.listener("web"), &[]).await;
    // :method POST, :scheme http, :path /up, :authority t.example, then
    // content-length as a literal field.
    let mut block = vec![0x83, 0x86, 0x04, 3];
    block.extend(b"/up");
    block.extend([0x01, 9]);
    block.extend(b"t.example");
    block.extend([0x00, 14]);
    block.extend(b"content-length");
    block.extend([7]);
    block.extend(b"8388608");
    h2.send(&frame(HEADERS, 0x4, 1, &block)).await;
    for _ in 0..3 {
        h2.send(&frame(DATA, 0, 1, &[b'u'; 16384])).await;
    }
    let head = h2.next_of(HEADERS).await.expect("the answer's head");
    assert_eq!(head.stream, 1);
    let (mut body, mut ended) = (Vec::new(), false);
    let reset = loop {
        let f = h2.next().await.expect("the answer, then the reset");
        assert_eq!(f.stream, 1, "only stream 1 speaks: kind {}", f.kind);
        match f.kind {
            DATA => {
                body.extend(&f.payload);
                ended = f.flags & 0x1 != 0;
            }
            RST_STREAM => break f,
            other => panic!("frame of kind {other} on stream 1"),
        }
    };
    assert!(ended, "the answer ended (END_STREAM) before the reset");
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("413 Payload Too Large"), "{body}");
    assert_eq!(reset.payload, [0, 0, 0, 0], "NO_ERROR");
    // More of the upload is ignored; the connection serves a next stream.
    h2.send(&frame(DATA, 0, 1, &[b'u'; 16384])).await;
    h2.get(3, "/").await;
    let next = h2.next_of(HEADERS).await.expect("stream 3's answer");
    assert_eq!(next.stream, 3);
    assert_eq!(a.hits(), 1, "only the GET was forwarded");
}
