//! Per-client limits (`client_limits`) through the real binary: clients
//! are told apart by the source address of their sockets (loopback has
//! all of 127/8: 127.0.1.x and 127.0.2.x are two /24s) or by the PROXY
//! header's source.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use support::library::{TcpBackend, metric};
use support::{Backend, Geolb, bounded, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const LIMIT: Duration = Duration::from_secs(5);

fn config(backend: SocketAddr, listener_extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\nshutdown_grace = \"5s\"\n\n\
         [[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{backend}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n{listener_extra}\n"
    )
}

/// A TCP connection to `to` from the address `src` (port chosen by the kernel).
async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{src}:0").parse().unwrap()).unwrap();
    bounded(LIMIT, "connect", socket.connect(to)).await.unwrap()
}

/// An HTTP/1.1 client on `stream`.
async fn client(stream: TcpStream) -> SendRequest<Empty<Bytes>> {
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// GET `/` on an open client: status and headers, or why it failed.
async fn get(sender: &mut SendRequest<Empty<Bytes>>) -> Result<(u16, HeaderMap), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::get("/")
        .header("host", "t.example")
        .body(Empty::new())
        .unwrap();
    let resp = bounded(LIMIT, "request", sender.send_request(req))
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    body.collect().await.map_err(|e| e.to_string())?;
    Ok((parts.status.as_u16(), parts.headers))
}

/// A new connection from `src` and one request on it.
async fn get_from(src: &str, to: SocketAddr) -> Result<(u16, HeaderMap), String> {
    let mut c = client(connect_from(src, to).await).await;
    get(&mut c).await
}

async fn limited(geolb: &Geolb, limit: &str) -> f64 {
    let text = geolb.metrics().await;
    metric(
        &text,
        "geolb_client_limited_total",
        &[("listener", "web"), ("limit", limit)],
    )
    .unwrap_or(-1.0)
}

#[tokio::test]
async fn a_client_prefix_past_its_connections_is_closed_while_others_are_served() {
    let backend = Backend::start("a").await;
    let geolb = Geolb::start(&config(
        backend.addr,
        "client_limits = { max_connections = 2 }",
    ))
    .await;
    let addr = geolb.listener("web");
    assert_eq!(limited(&geolb, "connections").await, 0.0);

    let mut first = client(connect_from("127.0.1.1", addr).await).await;
    let mut second = client(connect_from("127.0.1.2", addr).await).await;
    assert_eq!(get(&mut first).await.unwrap().0, 200);
    assert_eq!(get(&mut second).await.unwrap().0, 200);
    // A third from the same /24 is closed at once, unanswered.
    let third = get_from("127.0.1.3", addr).await;
    assert!(third.is_err(), "{third:?}");
    assert_eq!(limited(&geolb, "connections").await, 1.0);
    // Another /24 is served meanwhile, and the two open ones go on.
    assert_eq!(get_from("127.0.2.1", addr).await.unwrap().0, 200);
    assert_eq!(get(&mut first).await.unwrap().0, 200);

    // Once one closes, the prefix may open another.
    drop(second);
    eventually(
        "a freed connection lets the prefix in again",
        LIMIT,
        || async { get_from("127.0.1.4", addr).await.is_ok() },
    )
    .await;
    assert_eq!(get(&mut first).await.unwrap().0, 200);
}

#[tokio::test]
async fn a_client_prefix_past_its_rate_gets_429_with_retry_after_until_tokens_refill() {
    let backend = Backend::start("a").await;
    let geolb = Geolb::start(&config(
        backend.addr,
        "client_limits = { requests_per_second = 1, burst = 3 }",
    ))
    .await;
    let addr = geolb.listener("web");
    let mut c = client(connect_from("127.0.1.1", addr).await).await;
    for _ in 0..3 {
        assert_eq!(get(&mut c).await.unwrap().0, 200);
    }
    let (status, headers) = get(&mut c).await.unwrap();
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(backend.hits(), 3, "a 429 is never forwarded");
    // The connection stays usable, and another prefix is not limited.
    assert_eq!(get_from("127.0.2.1", addr).await.unwrap().0, 200);
    // Another address of the same /24 shares the bucket.
    assert_eq!(get_from("127.0.1.9", addr).await.unwrap().0, 429);

    let text = geolb.metrics().await;
    let code = |c: &str| {
        metric(
            &text,
            "geolb_http_requests_total",
            &[("listener", "web"), ("pool", "p"), ("code", c)],
        )
    };
    assert_eq!(code("429"), Some(2.0));
    assert_eq!(limited(&geolb, "requests").await, 2.0);

    // A token comes back within a second.
    let deadline = std::time::Instant::now() + LIMIT;
    while get(&mut c).await.unwrap().0 == 429 {
        assert!(std::time::Instant::now() < deadline, "no token refilled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_proxy_protocol_the_limit_keys_on_the_proxy_source() {
    let backend = Backend::start("a").await;
    let geolb = Geolb::start(&config(
        backend.addr,
        "accept_proxy_protocol = true\nclient_limits = { max_connections = 1 }",
    ))
    .await;
    let addr = geolb.listener("web");
    // Every connection comes from 127.0.0.1 (the front load balancer).
    let via = |source: &'static str| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let header = format!("PROXY TCP4 {source} 192.0.2.1 4711 80\r\n");
        s.write_all(header.as_bytes()).await.unwrap();
        client(s).await
    };
    let mut held = via("198.51.100.7").await;
    assert_eq!(get(&mut held).await.unwrap().0, 200);
    let mut same = via("198.51.100.9").await;
    assert!(get(&mut same).await.is_err(), "same /24 as the one held");
    let mut other = via("203.0.113.5").await;
    assert_eq!(get(&mut other).await.unwrap().0, 200);
    assert_eq!(limited(&geolb, "connections").await, 1.0);
}

#[tokio::test]
async fn tcp_listeners_limit_connections_per_client() {
    let echo = TcpBackend::echo().await;
    let geolb = Geolb::start(&config(
        echo.addr,
        "protocol = \"tcp\"\nclient_limits = { max_connections = 1, ipv4_prefix = 32 }",
    ))
    .await;
    let addr = geolb.listener("web");
    let echoes = |mut s: TcpStream| async move {
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        bounded(LIMIT, "echo", s.read_exact(&mut buf)).await.ok()?;
        Some(s)
    };
    let held = echoes(connect_from("127.0.1.1", addr).await).await.unwrap();
    assert!(
        echoes(connect_from("127.0.1.1", addr).await)
            .await
            .is_none()
    );
    // With ipv4_prefix = 32, the neighbour is another client.
    assert!(
        echoes(connect_from("127.0.1.2", addr).await)
            .await
            .is_some()
    );
    drop(held);
    eventually("the address may connect again", LIMIT, || async {
        echoes(connect_from("127.0.1.1", addr).await)
            .await
            .is_some()
    })
    .await;
    assert!(limited(&geolb, "connections").await >= 1.0);
}

#[tokio::test]
async fn a_reload_changes_client_limits_for_new_requests() {
    let backend = Backend::start("a").await;
    let geolb = Geolb::start(&config(
        backend.addr,
        "client_limits = { requests_per_second = 1, burst = 1 }",
    ))
    .await;
    let addr = geolb.listener("web");
    let mut c = client(connect_from("127.0.1.1", addr).await).await;
    assert_eq!(get(&mut c).await.unwrap().0, 200);
    assert_eq!(get(&mut c).await.unwrap().0, 429);
    geolb.write_config(&config(backend.addr, "")).unwrap();
    geolb.signal("HUP");
    eventually("the limit is gone after the reload", LIMIT, || async {
        get_from("127.0.1.1", addr).await.map(|r| r.0) == Ok(200)
    })
    .await;
    for _ in 0..5 {
        assert_eq!(get(&mut c).await.unwrap().0, 200);
    }
}
