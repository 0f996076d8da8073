//! A tcp listener's copy, with `splice = true` (through pipes) and
//! `splice = false` (through buffers): the same bytes, counters, half-close,
//! idle timeout and resets either way, over real sockets on loopback.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use geolb::proxy::pipes;
use ring::digest::{Context, Digest, SHA256};
use support::library::*;
use support::{bounded, eventually};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(30);

/// A load balancer with one tcp listener `name` (pool `name`) over
/// `backend`, splicing or not, plus `extra` listener keys.
async fn lb(name: &str, backend: std::net::SocketAddr, splice: bool, extra: &str) -> Lb {
    let pools = format!("[[pool]]\nname = \"{name}\"\nbackends = [{{ addr = \"{backend}\" }}]\n");
    let spec = ListenerSpec {
        name,
        protocol: "tcp",
        pool: name,
        extra: format!("splice = {splice}\n{extra}"),
    };
    Lb::start(&pools, &[spec]).await
}

/// Reads to the end of stream: how many bytes, and their SHA-256.
async fn hash_to_end<R: AsyncRead + Unpin>(r: &mut R) -> (usize, Digest) {
    let mut hash = Context::new(&SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return (total, hash.finish()),
            Ok(n) => {
                hash.update(&buf[..n]);
                total += n;
            }
        }
    }
}

/// Writes `data`, then FIN.
async fn send_all(w: &mut OwnedWriteHalf, data: &[u8]) {
    for chunk in data.chunks(64 * 1024) {
        w.write_all(chunk).await.unwrap();
    }
    w.shutdown().await.unwrap();
}

fn sha(data: &[u8]) -> Digest {
    ring::digest::digest(&SHA256, data)
}

const UP: usize = 12 << 20;
const DOWN: usize = 10 << 20;

/// UP bytes from the client and DOWN from the backend, each direction
/// finished with a FIN while the other still flows: with `backend_first`
/// the backend sends and closes its side before reading, else the client
/// does. Both ends get every byte in order, and the counters say so.
async fn transfer(name: &str, splice: bool, backend_first: bool) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let backend = TcpBackend::start(move |s: TcpStream| {
        let tx = tx.clone();
        async move {
            let (mut r, mut w) = s.into_split();
            let got = if backend_first {
                send_all(&mut w, &pattern(22, DOWN)).await;
                hash_to_end(&mut r).await
            } else {
                let got = hash_to_end(&mut r).await;
                send_all(&mut w, &pattern(22, DOWN)).await;
                got
            };
            let _ = tx.send(got);
        }
    })
    .await;
    let lb = lb(name, backend.addr, splice, "").await;
    let (mut r, mut w) = TcpStream::connect(lb.addr(name))
        .await
        .unwrap()
        .into_split();
    let sent = pattern(11, UP);
    let got = if backend_first {
        let got = bounded(LIMIT, "the backend's bytes", hash_to_end(&mut r)).await;
        bounded(LIMIT, "the client's bytes out", send_all(&mut w, &sent)).await;
        got
    } else {
        bounded(LIMIT, "the client's bytes out", send_all(&mut w, &sent)).await;
        bounded(LIMIT, "the backend's answer", hash_to_end(&mut r)).await
    };
    assert_eq!(got.0, DOWN, "{name}: bytes to the client");
    assert_eq!(got.1.as_ref(), sha(&pattern(22, DOWN)).as_ref(), "{name}");
    let seen = bounded(LIMIT, "the backend's report", rx.recv())
        .await
        .unwrap();
    assert_eq!(seen.0, UP, "{name}: bytes to the backend");
    assert_eq!(seen.1.as_ref(), sha(&sent).as_ref(), "{name}");
    if splice {
        // The pipes it spliced through went back to the pool, not closed.
        assert!(pipes::open() > 0, "{name}: no pipe was ever made");
    }

    let series = |text: &str, d| {
        metric(
            text,
            "geolb_tcp_bytes_total",
            &[("listener", name), ("pool", name), ("direction", d)],
        )
    };
    eventually("byte counters equal the bytes sent", LIMIT, || async {
        let text = lb.metrics();
        series(&text, "in") == Some(UP as f64) && series(&text, "out") == Some(DOWN as f64)
    })
    .await;
    eventually("connection released", LIMIT, || async {
        lb.active(name, 0) == 0
    })
    .await;
}

#[tokio::test]
async fn both_ways_byte_exact_with_half_close_spliced() {
    transfer("splice-client-first", true, false).await;
    transfer("splice-backend-first", true, true).await;
}

#[tokio::test]
async fn both_ways_byte_exact_with_half_close_buffered() {
    transfer("copy-client-first", false, false).await;
    transfer("copy-backend-first", false, true).await;
}

/// After a transfer, a silent connection is still cut at `idle`.
async fn idle_cut(name: &str, splice: bool) {
    let backend = TcpBackend::echo().await;
    let lb = lb(
        name,
        backend.addr,
        splice,
        "timeouts = { idle = \"300ms\" }",
    )
    .await;
    let mut stream = TcpStream::connect(lb.addr(name)).await.unwrap();
    let data = pattern(5, 256 * 1024);
    stream.write_all(&data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    bounded(LIMIT, "echo", stream.read_exact(&mut back))
        .await
        .unwrap();
    assert!(back == data, "{name}: echo differs");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = bounded(
        Duration::from_secs(5),
        "idle cut",
        stream.read_to_end(&mut rest),
    )
    .await;
    let waited = started.elapsed();
    assert!(rest.is_empty(), "{name}");
    // The watchdog counts whole milliseconds: allow for that much.
    assert!(waited >= Duration::from_millis(290), "{name}: {waited:?}");
}

#[tokio::test]
async fn idle_timeout_cuts_spliced_and_buffered_connections() {
    idle_cut("idle-splice", true).await;
    idle_cut("idle-copy", false).await;
}

const MANY: usize = 200;

/// MANY connections at once, each echoing its own bytes; then, all open
/// and silent, they hold no pipes (only the pool's kept ones exist).
async fn many(name: &str, splice: bool) {
    let backend = TcpBackend::echo().await;
    let lb = lb(name, backend.addr, splice, "").await;
    let addr = lb.addr(name);
    let mut tasks = Vec::new();
    for i in 0..MANY {
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let data = pattern(100 + i as u64, 128 * 1024);
            let (mut r, mut w) = stream.split();
            let mut back = vec![0u8; data.len()];
            let (written, read) = tokio::join!(w.write_all(&data), r.read_exact(&mut back));
            written.unwrap();
            read.unwrap();
            assert!(back == data, "connection {i}: echo differs");
            stream
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        open.push(bounded(LIMIT, "one of many echoes", t).await.unwrap());
    }
    if splice {
        // Holding a pipe per idle connection would make at least MANY.
        eventually("idle connections give their pipes back", LIMIT, || async {
            pipes::open() < MANY / 2
        })
        .await;
    }
    drop(open);
    eventually("every connection released", LIMIT, || async {
        lb.active(name, 0) == 0
    })
    .await;
}

#[tokio::test]
async fn many_concurrent_connections_spliced_and_buffered() {
    many("many-splice", true).await;
    many("many-copy", false).await;
}

/// A reset socket: the next close sends RST, not FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// The client resets while the backend streams to it: the backend's
/// connection is closed promptly and the connection is released.
async fn client_reset(name: &str, splice: bool) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let backend = TcpBackend::start(move |mut s: TcpStream| {
        let tx = tx.clone();
        async move {
            let chunk = pattern(9, 64 * 1024);
            let (mut r, mut w) = s.split();
            // Streams until the proxy closes this side (a write fails, or
            // the end of stream or a reset arrives).
            let streaming = async { while w.write_all(&chunk).await.is_ok() {} };
            tokio::select! {
                _ = streaming => {}
                _ = r.read_u8() => {}
            }
            let _ = tx.send(());
        }
    })
    .await;
    let lb = lb(name, backend.addr, splice, "timeouts = { idle = \"60s\" }").await;
    let mut stream = TcpStream::connect(lb.addr(name)).await.unwrap();
    let mut some = vec![0u8; 512 * 1024];
    bounded(LIMIT, "data flowing", stream.read_exact(&mut some))
        .await
        .unwrap();
    reset(stream);
    let closed = bounded(
        Duration::from_secs(5),
        "the backend side closed after the client reset",
        rx.recv(),
    )
    .await;
    assert!(closed.is_some(), "{name}");
    eventually("connection released", Duration::from_secs(5), || async {
        lb.active(name, 0) == 0
    })
    .await;
}

/// The backend reads a little, answers a word and resets (a crashed
/// backend) while the client keeps sending: the client's side is closed
/// promptly (its `a_backend_dying_mid_stream_closes_the_client_promptly`,
/// once in tests/tcp_tls.rs).
async fn backend_reset(name: &str, splice: bool) {
    let backend = TcpBackend::start(|mut s: TcpStream| async move {
        let mut buf = vec![0u8; 256 * 1024];
        let _ = s.read_exact(&mut buf).await;
        let _ = s.write_all(b"partial").await;
        reset(s);
    })
    .await;
    let lb = lb(name, backend.addr, splice, "timeouts = { idle = \"60s\" }").await;
    let (mut r, mut w) = TcpStream::connect(lb.addr(name))
        .await
        .unwrap()
        .into_split();
    let writer = tokio::spawn(async move {
        let chunk = pattern(3, 64 * 1024);
        for _ in 0..4096 {
            if w.write_all(&chunk).await.is_err() {
                return true;
            }
        }
        false
    });
    let mut got = Vec::new();
    let _ = bounded(
        Duration::from_secs(5),
        "client side closed after the backend reset",
        r.read_to_end(&mut got),
    )
    .await;
    // "partial" may arrive, or be lost to the reset; nothing else.
    assert!(b"partial".starts_with(&got), "{name}: {got:?}");
    assert!(
        bounded(Duration::from_secs(5), "client writes fail", writer)
            .await
            .unwrap(),
        "{name}: the client could write 256 MiB into a dead connection"
    );
    eventually("connection released", Duration::from_secs(5), || async {
        lb.active(name, 0) == 0
    })
    .await;
}

#[tokio::test]
async fn a_reset_mid_transfer_closes_the_other_side_spliced_and_buffered() {
    client_reset("client-reset-splice", true).await;
    client_reset("client-reset-copy", false).await;
    backend_reset("backend-reset-splice", true).await;
    backend_reset("backend-reset-copy", false).await;
}

/// How late a 5 ms timer on this runtime fires, at worst, while a client
/// on another thread sends as fast as it can for `spell` through `name`
/// to a sink on a third thread.
async fn timer_lateness_under_load(name: &str, splice: bool, spell: Duration) -> Duration {
    use std::io::{Read, Write};
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = sink.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = sink.accept().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let lb = lb(name, backend, splice, "").await;
    let addr = lb.addr(name);
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let chunk = pattern(1, 256 * 1024);
        let until = std::time::Instant::now() + spell;
        while std::time::Instant::now() < until {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut worst = Duration::ZERO;
    let until = std::time::Instant::now() + spell;
    while std::time::Instant::now() < until {
        let asked = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        worst = worst.max(asked.elapsed().saturating_sub(Duration::from_millis(5)));
    }
    // Joined off the runtime: its last write may wait for the proxy.
    bounded(
        LIMIT,
        "the client thread",
        tokio::task::spawn_blocking(move || client.join()),
    )
    .await
    .unwrap()
    .unwrap();
    worst
}

#[tokio::test]
async fn a_saturated_connection_leaves_the_worker_to_other_tasks() {
    // One thread runs the proxy and this test's timer (#[tokio::test] is
    // single-threaded): a copy that never yields would hold the timer for
    // as long as the client keeps sending.
    for (name, splice) in [("saturated-splice", true), ("saturated-copy", false)] {
        let worst = timer_lateness_under_load(name, splice, Duration::from_secs(2)).await;
        assert!(
            worst < Duration::from_millis(500),
            "{name}: a 5 ms timer fired {worst:?} late"
        );
    }
}

// ---- HTTP/1 response bodies, spliced from the backend's socket ----

/// A raw keep-alive backend: `GET /big` is `BIG` bytes with a length,
/// `GET /cut` promises `BIG` and closes after half. Counts connections.
async fn length_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let body = pattern(5, BIG);
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let cut = buf.starts_with(b"GET /cut ");
                    buf.drain(..head_end);
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                    let sent = if cut { &body[..BIG / 2] } else { &body[..] };
                    if s.write_all(head.as_bytes()).await.is_err()
                        || s.write_all(sent).await.is_err()
                    {
                        return;
                    }
                    if cut {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// Longer than a pipe holds (64 KiB) and than loopback buffers take at
/// once, so that both splices wait for their sockets.
const BIG: usize = 3 << 20;

/// Reads one response with a `Content-Length` off `s`: its body, or
/// what came of it before the connection closed.
async fn read_response(s: &mut TcpStream, pace: Option<Duration>) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return Vec::new(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        if let Some(pace) = pace {
            tokio::time::sleep(pace).await;
        }
        match s.read(&mut chunk[..16 * 1024]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body
}

async fn http_geolb(backend: std::net::SocketAddr, splice: bool) -> support::Geolb {
    support::Geolb::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{backend}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nsplice = {splice}\n"
    ))
    .await
}

/// Two large answers on one client connection, spliced or copied: the same
/// bytes, counted alike, and the backend connection kept for the second.
/// The pipe gauge tells which way they went.
#[tokio::test]
async fn http_bodies_spliced_and_copied_arrive_whole_and_counted() {
    let want = pattern(5, BIG);
    for splice in [true, false] {
        let (backend, connections) = length_backend().await;
        let geolb = http_geolb(backend, splice).await;
        let mut s = TcpStream::connect(geolb.listener("web")).await.unwrap();
        for _ in 0..2 {
            s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let body = bounded(LIMIT, "a large answer", read_response(&mut s, None)).await;
            assert!(
                body == want,
                "splice = {splice}: {} bytes, not the backend's",
                body.len()
            );
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "splice = {splice}");
        let text = geolb.metrics().await;
        let out = r#"geolb_http_bytes_total{listener="web",pool="p",direction="out"}"#;
        assert_eq!(
            support::metric_value(&text, out),
            Some((2 * BIG) as f64),
            "{text}"
        );
        let pipes = support::metric_value(&text, "geolb_tcp_pipes").unwrap();
        assert_eq!(pipes > 0.0, splice, "splice = {splice}: {pipes} pipes");
    }
}

/// A splicing geolb in front of a [`length_backend`], and a client
/// connection to it that has asked for `path`.
async fn asked(path: &str) -> (support::Geolb, TcpStream) {
    let (backend, _) = length_backend().await;
    let geolb = http_geolb(backend, true).await;
    let mut s = TcpStream::connect(geolb.listener("web")).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    (geolb, s)
}

/// A client that reads slowly holds the splice at its socket; what it
/// gets is still whole.
#[tokio::test]
async fn a_slow_reader_gets_a_spliced_body_whole() {
    let (_geolb, mut s) = asked("/big").await;
    let body = bounded(
        LIMIT,
        "a paced read",
        read_response(&mut s, Some(Duration::from_millis(1))),
    )
    .await;
    assert!(body == pattern(5, BIG), "{} bytes", body.len());
}

/// A backend that closes mid-body: the client gets what was sent and
/// then the connection's end, never a response that looks whole.
#[tokio::test]
async fn a_backend_closing_mid_body_closes_the_client_spliced() {
    let (_geolb, mut s) = asked("/cut").await;
    let body = bounded(LIMIT, "a cut answer", read_response(&mut s, None)).await;
    assert!(body.len() < BIG, "{} bytes", body.len());
    assert_eq!(body[..], pattern(5, BIG)[..body.len()]);
    let mut rest = [0u8; 1];
    let end = bounded(LIMIT, "the close", s.read(&mut rest)).await;
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
}
