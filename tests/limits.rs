//! Per-client limits (`client_limits`) through the real binary: clients
//! are told apart by the source address of their sockets (loopback has
//! all of 127/8: 127.0.1.x and 127.0.2.x are two /24s) or by the PROXY
//! header's source.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::ServerName;
use support::h2::{ACK, DATA, GOAWAY, H2, HEADERS, PING, frame};
use support::library::{Answer, Counting, Leaf, Pki, TcpBackend, metric, tls_connect, tls_list};
use support::{
    Backend, Geolb, bounded, connect_from, eventually, get_on, http1_client, http2_client,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const LIMIT: Duration = Duration::from_secs(5);

fn config(backend: SocketAddr, listener_extra: &str) -> String {
    config_on("", backend, listener_extra)
}

/// As [`config`], with more `[runtime]` lines (`worker_threads = 1\n`).
fn config_on(runtime: &str, backend: SocketAddr, listener_extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\n{runtime}shutdown_grace = \"5s\"\n\n\
         [[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{backend}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n{listener_extra}\n"
    )
}

/// GET `/` on an open client: status and headers, or why it failed.
async fn get(sender: &mut SendRequest<Empty<Bytes>>) -> Result<(u16, HeaderMap), String> {
    get_on(sender, "/")
        .await
        .map(|(status, headers, _)| (status, headers))
}

/// A new connection from `src` and one request on it.
async fn get_from(src: &str, to: SocketAddr) -> Result<(u16, HeaderMap), String> {
    let mut c = http1_client(connect_from(src, to).await).await;
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

    let mut first = http1_client(connect_from("127.0.1.1", addr).await).await;
    let mut second = http1_client(connect_from("127.0.1.2", addr).await).await;
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
    let mut c = http1_client(connect_from("127.0.1.1", addr).await).await;
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
        http1_client(s).await
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
    let mut c = http1_client(connect_from("127.0.1.1", addr).await).await;
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

// --- HTTP/2, spoken frame by frame ------------------------------------------

/// An HTTP/2 client with prior knowledge on a plain listener (geolb's
/// own HTTP/1 server hands it to hyper after the preface): one stream
/// waiting on a slow backend holds up none of the others, and uploads past
/// the first flow-control window (frames with no `\n` in 64 KiB, which
/// the 414 check for a long request line once took for one and answered
/// into the connection) and streamed answers arrive whole, side by side.
#[tokio::test]
async fn http2_streams_with_large_uploads_go_on_side_by_side() {
    http2_streams_side_by_side("").await;
}

#[tokio::test]
async fn http2_streams_with_large_uploads_go_on_side_by_side_on_one_thread() {
    http2_streams_side_by_side(ONE_THREAD).await;
}

async fn http2_streams_side_by_side(runtime: &str) {
    let backend = Backend::start("a").await;
    let geolb = Geolb::start(&config_on(runtime, backend.addr, "")).await;
    let sender = http2_client(geolb.listener("web")).await;
    let send = |req: http::Request<Full<Bytes>>| {
        let mut sender = sender.clone();
        tokio::spawn(async move {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        })
    };
    let get = |path: &str| {
        http::Request::get(format!("http://x{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let slow = send(get("/slow?ms=3000"));
    const UPLOAD: usize = 200_000;
    const STREAMED: usize = 300_000;
    let mut others = Vec::new();
    for i in 0..16 {
        others.push(if i % 2 == 0 {
            send(
                http::Request::post("http://x/upload")
                    .body(Full::new(Bytes::from(vec![b'u'; UPLOAD])))
                    .unwrap(),
            )
        } else {
            send(get(&format!("/bytes?n={STREAMED}")))
        });
    }
    for (i, other) in others.into_iter().enumerate() {
        let (status, body) = bounded(
            Duration::from_millis(2500),
            "a stream beside a slow one",
            other,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(status, 200, "stream {i}");
        if i % 2 == 0 {
            assert_eq!(
                body,
                UPLOAD.to_string(),
                "upload {i}: bytes the backend counted"
            );
        } else {
            assert_eq!(body.len(), STREAMED, "streamed answer {i}");
        }
    }
    assert!(!slow.is_finished(), "the slow stream answered before 3 s");
    let (status, body) = bounded(LIMIT, "the slow stream", slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, &body[..]), (200, &b"a"[..]));
}

#[tokio::test]
async fn max_concurrent_streams_is_announced_as_configured() {
    let backend = Backend::start("a").await;
    let geolb = Geolb::start(&config(backend.addr, "max_concurrent_streams = 7")).await;
    let (_h2, settings) = H2::connect(geolb.listener("web"), &[]).await;
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3).
    assert!(settings.contains(&(0x3, 7)), "{settings:?}");

    // A reload changes it for new connections.
    geolb.write_config(&config(backend.addr, "")).unwrap();
    geolb.signal("HUP");
    eventually("the default after a reload", LIMIT, || async {
        let (_h2, settings) = H2::connect(geolb.listener("web"), &[]).await;
        settings.contains(&(0x3, 100))
    })
    .await;
}

#[tokio::test]
async fn pings_neither_cut_an_idle_http2_connection_early_nor_keep_it_past_idle() {
    pings_and_idle_http2("", false).await;
}

/// On one thread (a current-thread runtime), the same.
#[tokio::test]
async fn pings_neither_cut_an_idle_http2_connection_early_nor_keep_it_past_idle_on_one_thread() {
    pings_and_idle_http2(ONE_THREAD, false).await;
}

/// Over TLS that agreed on h2, which hyper's HTTP/2 server serves alone
/// (no look at the first bytes for the version): the same GOAWAY.
#[tokio::test]
async fn pings_neither_cut_an_idle_http2_connection_early_nor_keep_it_past_idle_over_tls() {
    pings_and_idle_http2("", true).await;
}

const ONE_THREAD: &str = "worker_threads = 1\n";

/// A TLS connection to `addr` that agreed on h2 (`web.test`, trusted by
/// `pki`'s clients).
async fn h2_over_tls(pki: &Pki, addr: SocketAddr) -> TlsStream<TcpStream> {
    let stream = tls_connect(&pki.client(&[b"h2"]), addr, "web.test")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    stream
}

/// A listener's lines to serve HTTPS with `leaf`.
fn https_with(leaf: &Leaf) -> String {
    format!("protocol = \"https\"\n{}\n", tls_list(&[leaf]))
}

/// A client that agreed on h2 and then speaks HTTP/1.1: HTTP/2's server
/// takes its bytes for a bad preface, a connection error it may close on
/// without a GOAWAY (RFC 9113 §3.4), and closes at once: no HTTP/1.1
/// answer, no wait for the idle timeout.
#[tokio::test]
async fn a_client_that_agreed_on_h2_and_speaks_http1_is_closed_at_once() {
    let backend = Backend::start("a").await;
    let pki = Pki::new();
    let leaf = pki.leaf("web", &["web.test"]);
    let geolb = Geolb::start(&config(backend.addr, &https_with(&leaf))).await;
    let mut stream = h2_over_tls(&pki, geolb.listener("web")).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    bounded(LIMIT, "the close after a bad preface", async {
        let _ = stream.read_to_end(&mut got).await;
    })
    .await;
    // HTTP/2 frames only (the server's SETTINGS first), not an answer.
    assert!(
        got.len() >= 9 && got[3] == 0x4,
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // Still serving the next client.
    let (mut h2, _) = H2::over(h2_over_tls(&pki, geolb.listener("web")).await, &[]).await;
    h2.get(1, "/").await;
    let answer = h2.next_of(HEADERS).await.expect("an answer on stream 1");
    assert_eq!(answer.stream, 1);
}

async fn pings_and_idle_http2(runtime: &str, tls: bool) {
    let backend = Backend::start("a").await;
    let pki = Pki::new();
    let leaf = pki.leaf("web", &["web.test"]);
    let https = match tls {
        true => https_with(&leaf),
        false => String::new(),
    };
    let geolb = Geolb::start(&config_on(
        runtime,
        backend.addr,
        &format!("{https}timeouts = {{ header = \"300ms\", idle = \"2s\" }}"),
    ))
    .await;
    let addr = geolb.listener("web");
    let (mut h2, _) = match tls {
        true => H2::over(h2_over_tls(&pki, addr).await, &[]).await,
        false => H2::connect(addr, &[]).await,
    };
    // PINGs for three header timeouts: each is answered, none cuts.
    for _ in 0..9 {
        h2.ping().await;
        let f = h2.next_of(PING).await.expect("a PING answer, not a cut");
        assert_eq!((f.flags, f.payload.as_slice()), (ACK, &b"geolb-ok"[..]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h2.get(1, "/").await;
    let mut answered = false;
    while let Some(f) = h2.next().await {
        if f.kind == DATA && f.stream == 1 && f.flags & 0x1 != 0 {
            answered = true;
            break;
        }
    }
    assert!(answered, "the request after the PINGs is served");
    let quiet = std::time::Instant::now();
    // PINGs go on; at the idle timeout geolb says GOAWAY, then closes.
    let mut goaway = None;
    let mut pinger = tokio::time::interval(Duration::from_millis(200));
    while goaway.is_none() {
        tokio::select! {
            _ = pinger.tick() => h2.ping().await,
            f = h2.next() => match f {
                Some(f) if f.kind == GOAWAY => goaway = Some(quiet.elapsed()),
                Some(_) => {}
                None => panic!("closed without GOAWAY after {:?}", quiet.elapsed()),
            },
        }
    }
    let after = goaway.unwrap();
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(4),
        "GOAWAY {after:?} after the last response, idle is 2s"
    );
    // Then the connection ends.
    bounded(LIMIT, "the close after GOAWAY", async {
        while h2.next().await.is_some() {
            h2.write
                .write_all(&frame(PING, 0, 0, b"geolb-ok"))
                .await
                .ok();
        }
    })
    .await;
}

#[tokio::test]
async fn an_http2_response_held_by_a_closed_window_frees_its_backend_after_idle() {
    closed_window_frees_backends("").await;
}

#[tokio::test]
async fn an_http2_response_held_by_a_closed_window_frees_its_backend_after_idle_on_one_thread() {
    closed_window_frees_backends(ONE_THREAD).await;
}

async fn closed_window_frees_backends(runtime: &str) {
    // A backend with a body larger than any buffer on the way, that notes
    // when its connection is closed under it.
    let closed = Arc::new(AtomicUsize::new(0));
    let closed2 = closed.clone();
    let origin = TcpBackend::start(move |mut s: TcpStream| {
        let closed = closed2.clone();
        async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let chunk = vec![b'x'; 64 * 1024];
            let mut ok = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n")
                .await
                .is_ok();
            while ok {
                ok = s.write_all(&chunk).await.is_ok();
            }
            closed.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let geolb = Geolb::start(&config_on(
        runtime,
        origin.addr,
        "timeouts = { idle = \"1s\" }",
    ))
    .await;
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0: no DATA may come.
    let (mut h2, _) = H2::connect(geolb.listener("web"), &[(0x4, 0)]).await;
    let start = std::time::Instant::now();
    // Apart: the later two are added while geolb's watcher sleeps until
    // the first is due, and are cut at their own time, not the first's.
    for stream in [1, 3, 5] {
        if stream > 1 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        h2.get(stream, "/big").await;
    }
    let mut pinger = tokio::time::interval(Duration::from_millis(200));
    let mut resets = Vec::new();
    while closed.load(Ordering::SeqCst) < 3 {
        assert!(start.elapsed() < LIMIT, "backend connections still held");
        tokio::select! {
            _ = pinger.tick() => h2.ping().await,
            f = h2.next() => match f {
                Some(f) if f.kind == 0x3 => resets.push(f.stream),
                Some(f) => assert_ne!(f.kind, DATA, "DATA past a closed window"),
                None => break,
            },
        }
    }
    assert_eq!(
        closed.load(Ordering::SeqCst),
        3,
        "each backend connection freed"
    );
    // The last was asked for 600 ms in: cut no sooner than its own idle
    // timeout after that.
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "the last cut at {:?}, before its idle timeout",
        start.elapsed()
    );
    let text = geolb.metrics().await;
    assert_eq!(
        metric(
            &text,
            "geolb_http_stalled_streams_total",
            &[("listener", "web")]
        ),
        Some(3.0)
    );
    // Opening the window lets hyper see the cut: each stream is reset.
    let mut update = vec![0u8; 0];
    update.extend(1_000_000u32.to_be_bytes());
    for stream in [1, 3, 5] {
        h2.send(&frame(0x8, 0, stream, &update)).await;
    }
    bounded(LIMIT, "RST_STREAM for each cut stream", async {
        while resets.len() < 3 {
            match h2.next().await {
                Some(f) if f.kind == 0x3 => resets.push(f.stream),
                Some(_) => {}
                None => panic!("closed before the resets: {resets:?}"),
            }
        }
    })
    .await;
}

/// A small answer to an HTTP/2 client that holds its window closed holds
/// no backend connection: geolb's client hands it back when the body came
/// whole with the head (and hyper takes a body's first frame before it
/// waits for the window, which freed it too).
#[tokio::test]
async fn a_small_body_held_by_a_closed_window_leaves_its_backend_connection_free() {
    let origin = Counting::start(Answer::After(200, Duration::ZERO)).await;
    let geolb = Geolb::start(&config(origin.addr, "")).await;
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0: no DATA may come.
    let (mut h2, _) = H2::connect(geolb.listener("web"), &[(0x4, 0)]).await;
    for stream in [1, 3, 5] {
        h2.get(stream, "/small").await;
        let head = h2.next_of(HEADERS).await.expect("the response's head");
        assert_eq!(head.stream, stream);
    }
    assert_eq!(
        Counting::get(&origin.connections),
        1,
        "the bodies the client holds back hold no backend connection"
    );
    let mut update = Vec::new();
    update.extend(1_000_000u32.to_be_bytes());
    h2.send(&frame(0x8, 0, 0, &update)).await;
    for stream in [1, 3, 5] {
        h2.send(&frame(0x8, 0, stream, &update)).await;
    }
    let mut bodies = std::collections::BTreeMap::new();
    bounded(LIMIT, "the three bodies", async {
        while bodies.len() < 3 {
            let f = h2.next_of(DATA).await.expect("DATA");
            bodies.insert(f.stream, f.payload);
        }
    })
    .await;
    for stream in [1, 3, 5] {
        assert_eq!(bodies[&stream], b"ok", "stream {stream}");
    }
}

#[tokio::test]
async fn https_listeners_close_a_client_past_its_connections_before_the_handshake() {
    let backend = Backend::start("a").await;
    let pki = Pki::new();
    let cert = pki.leaf("web", &["web.test"]);
    let geolb = Geolb::start(&config(
        backend.addr,
        &format!(
            "protocol = \"https\"\n{}\nclient_limits = {{ max_connections = 1 }}",
            tls_list(&[&cert])
        ),
    ))
    .await;
    let addr = geolb.listener("web");
    let connector = pki.client(&[b"http/1.1"]);
    let handshake = |src: &'static str| {
        let connector = connector.clone();
        async move {
            let tcp = connect_from(src, addr).await;
            let name = ServerName::try_from("web.test").unwrap();
            bounded(LIMIT, "handshake", connector.connect(name, tcp)).await
        }
    };
    let held = handshake("127.0.1.1").await.unwrap();
    let mut c = http1_client(held).await;
    assert_eq!(get(&mut c).await.unwrap().0, 200);
    assert!(
        handshake("127.0.1.2").await.is_err(),
        "same /24, no handshake"
    );
    let other = handshake("127.0.2.1").await.unwrap();
    assert_eq!(get(&mut http1_client(other).await).await.unwrap().0, 200);
    assert_eq!(limited(&geolb, "connections").await, 1.0);
}
