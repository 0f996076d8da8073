//! L4 proxying, the PROXY protocol and TLS termination, over real sockets
//! on loopback (port 0 everywhere; every wait bounded).
//!
//! Two layers:
//! - `library`: drives `geolb::proxy::{tcp, tls, proxy_protocol}` in
//!   process, with a config compiled by `geolb::state::compile`, so a
//!   failure points at the data path itself (these need only
//!   `src/proxy/mod.rs` to declare the modules).
//! - `binary`: the real `geolb run` / `geolb check`, for what only the
//!   wiring shows (listeners bound from the config, /metrics, `check`
//!   output).

mod support;

use std::time::Duration;

use support::library::*;
use support::{bounded, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(30);

/// `[[pool]]` named `name` over `addrs`, plus extra keys.
fn pool(name: &str, addrs: &[std::net::SocketAddr], extra: &str) -> String {
    let list: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        "[[pool]]\nname = \"{name}\"\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

fn listener<'a>(name: &'a str, protocol: &'a str, pool: &'a str, extra: &str) -> ListenerSpec<'a> {
    ListenerSpec {
        name,
        protocol,
        pool,
        extra: extra.to_string(),
    }
}

/// Sends `out` (then FIN) while reading everything the peer sends until
/// its FIN; returns what was read.
async fn exchange<S>(stream: S, out: Vec<u8>) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        for chunk in out.chunks(64 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    got
}

/// The expected v2 header for TCP over IPv4.
fn v2_inet(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

fn v4(addr: std::net::SocketAddr) -> std::net::SocketAddrV4 {
    match addr {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("expected IPv4, got {other}"),
    }
}

/// `GET /headers` with `Host: site.test` over HTTP/1.1 on `io` (bounded
/// by [`LIMIT`], `what` naming it if it hangs); the response.
async fn get_headers_http1<S>(io: S, what: &str) -> http::Response<hyper::body::Incoming>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/headers")
        .header("host", "site.test")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    bounded(LIMIT, what, sender.send_request(req))
        .await
        .unwrap()
}

mod library {
    use super::*;
    use geolb::proxy::{tcp, tls};
    use geolb::proxy_protocol;

    #[tokio::test]
    async fn tens_of_mib_pass_byte_identical_both_ways() {
        let backend = TcpBackend::echo().await;
        let lb = Lb::start(
            &pool("bulk", &[backend.addr], ""),
            &[listener("bulk", "tcp", "bulk", "")],
        )
        .await;
        const SIZE: usize = 48 << 20;
        let data = pattern(7, SIZE);
        let stream = TcpStream::connect(lb.addr("bulk")).await.unwrap();
        let got = bounded(LIMIT, "48 MiB echo", exchange(stream, data.clone())).await;
        assert_eq!(got.len(), SIZE);
        assert!(got == data, "echoed bytes differ");

        let text = lb.metrics();
        let series = |d| {
            metric(
                &text,
                "geolb_tcp_bytes_total",
                &[("listener", "bulk"), ("pool", "bulk"), ("direction", d)],
            )
        };
        assert_eq!(series("in"), Some(SIZE as f64), "{text}");
        assert_eq!(series("out"), Some(SIZE as f64), "{text}");
        assert_eq!(
            metric(
                &text,
                "geolb_tcp_connections_total",
                &[("listener", "bulk"), ("pool", "bulk")]
            ),
            Some(1.0)
        );
        eventually("active count back to 0", LIMIT, || async {
            lb.active("bulk", 0) == 0
        })
        .await;
    }

    #[tokio::test]
    async fn half_close_lets_the_backend_answer_after_the_client_finished() {
        let backend = TcpBackend::start(count_then_answer).await;
        let lb = Lb::start(
            &pool("half", &[backend.addr], ""),
            &[listener("half", "tcp", "half", "")],
        )
        .await;
        let mut stream = TcpStream::connect(lb.addr("half")).await.unwrap();
        stream.write_all(&pattern(1, 300_000)).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = String::new();
        bounded(
            LIMIT,
            "answer after FIN",
            stream.read_to_string(&mut answer),
        )
        .await
        .unwrap();
        assert_eq!(answer, "got 300000 bytes");
    }

    #[tokio::test]
    async fn backend_half_close_keeps_the_client_direction_open() {
        // The backend says its piece and closes its write side, then still
        // reads and reports what the client sends afterwards.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let backend = TcpBackend::start(move |mut s: TcpStream| {
            let tx = tx.clone();
            async move {
                s.write_all(b"hello").await.unwrap();
                let (mut r, mut w) = s.split();
                w.shutdown().await.unwrap();
                let mut got = Vec::new();
                let _ = r.read_to_end(&mut got).await;
                let _ = tx.send(got);
            }
        })
        .await;
        let lb = Lb::start(
            &pool("bhalf", &[backend.addr], ""),
            &[listener("bhalf", "tcp", "bhalf", "")],
        )
        .await;
        let mut stream = TcpStream::connect(lb.addr("bhalf")).await.unwrap();
        let mut got = Vec::new();
        bounded(
            LIMIT,
            "backend FIN reaches client",
            stream.read_to_end(&mut got),
        )
        .await
        .unwrap();
        assert_eq!(got, b"hello");
        stream.write_all(b"late words").await.unwrap();
        stream.shutdown().await.unwrap();
        let seen = bounded(LIMIT, "backend got the late words", rx.recv()).await;
        assert_eq!(seen.as_deref(), Some(&b"late words"[..]));
        eventually("connection released", LIMIT, || async {
            lb.active("bhalf", 0) == 0
        })
        .await;
    }

    #[tokio::test]
    async fn an_idle_connection_is_cut_and_a_busy_one_is_not() {
        let backend = TcpBackend::echo().await;
        let lb = Lb::start(
            &pool("idle", &[backend.addr], ""),
            &[listener(
                "idle",
                "tcp",
                "idle",
                "timeouts = { idle = \"400ms\" }",
            )],
        )
        .await;
        // Busy: a byte every 150 ms for over a second outlives the timeout.
        let mut busy = TcpStream::connect(lb.addr("idle")).await.unwrap();
        for i in 0..8u8 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            busy.write_all(&[i]).await.unwrap();
            let mut b = [0u8; 1];
            bounded(LIMIT, "echo", busy.read_exact(&mut b))
                .await
                .unwrap();
            assert_eq!(b[0], i);
        }
        // Then silent: closed once the idle timeout has passed.
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let _ = bounded(
            Duration::from_secs(5),
            "idle cut",
            busy.read_to_end(&mut buf),
        )
        .await;
        let waited = started.elapsed();
        assert!(buf.is_empty());
        // The watchdog counts whole milliseconds: allow for that much.
        assert!(waited >= Duration::from_millis(390), "{waited:?}");
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_but_open_connections_go_on() {
        let backend = TcpBackend::echo().await;
        let lb = Lb::start(
            &pool("stop", &[backend.addr], ""),
            &[listener("stop", "tcp", "stop", "")],
        )
        .await;
        let mut open = TcpStream::connect(lb.addr("stop")).await.unwrap();
        open.write_all(b"before").await.unwrap();
        let mut b = [0u8; 6];
        bounded(LIMIT, "echo before", open.read_exact(&mut b))
            .await
            .unwrap();
        lb.shutdown();
        lb.tasks.close();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The accept loop has returned and dropped its socket.
        assert!(TcpStream::connect(lb.addr("stop")).await.is_err());
        open.write_all(b"after!").await.unwrap();
        bounded(LIMIT, "echo after", open.read_exact(&mut b))
            .await
            .unwrap();
        assert_eq!(&b, b"after!");
        open.shutdown().await.unwrap();
        let mut rest = Vec::new();
        bounded(LIMIT, "close", open.read_to_end(&mut rest))
            .await
            .unwrap();
        bounded(
            LIMIT,
            "every task ends once the connection does",
            lb.tasks.wait(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_failed_connect_is_retried_on_another_backend() {
        let live = TcpBackend::echo().await;
        let dead = support::refused_addr();
        let lb = Lb::start(
            &format!(
                "{}{}",
                pool("retry", &[dead, live.addr], ""),
                pool("nothing", &[support::refused_addr()], "")
            ),
            &[
                listener("retry", "tcp", "retry", "retries = 1"),
                listener("nothing", "tcp", "nothing", ""),
            ],
        )
        .await;
        for i in 0..6u8 {
            let stream = TcpStream::connect(lb.addr("retry")).await.unwrap();
            let got = bounded(LIMIT, "echo via retry", exchange(stream, vec![i; 1000])).await;
            assert_eq!(got, vec![i; 1000], "connection {i}");
        }
        let text = lb.metrics();
        let errors = metric(
            &text,
            "geolb_tcp_connect_errors_total",
            &[("listener", "retry"), ("pool", "retry")],
        );
        assert!(errors.is_some_and(|n| n >= 1.0), "{text}");

        // No backend reachable at all: the client is closed, not left hanging.
        let mut stream = TcpStream::connect(lb.addr("nothing")).await.unwrap();
        let mut buf = Vec::new();
        let _ = bounded(
            Duration::from_secs(5),
            "closed when no backend answers",
            stream.read_to_end(&mut buf),
        )
        .await;
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn proxy_v1_and_v2_carry_the_real_client_address_to_backends() {
        let backend = TcpBackend::echo().await;
        let lb = Lb::start(
            &format!(
                "{}{}",
                pool("pv1", &[backend.addr], "proxy_protocol = \"v1\""),
                pool("pv2", &[backend.addr], "proxy_protocol = \"v2\"")
            ),
            &[
                listener("pv1", "tcp", "pv1", ""),
                listener("pv2", "tcp", "pv2", ""),
            ],
        )
        .await;

        let stream = TcpStream::connect(lb.addr("pv1")).await.unwrap();
        let client = stream.local_addr().unwrap();
        let got = bounded(LIMIT, "v1", exchange(stream, b"ping".to_vec())).await;
        let want = format!(
            "PROXY TCP4 {} {} {} {}\r\nping",
            client.ip(),
            lb.addr("pv1").ip(),
            client.port(),
            lb.addr("pv1").port()
        );
        assert_eq!(String::from_utf8_lossy(&got), want);

        let stream = TcpStream::connect(lb.addr("pv2")).await.unwrap();
        let client = stream.local_addr().unwrap();
        let got = bounded(LIMIT, "v2", exchange(stream, b"ping".to_vec())).await;
        let mut want = v2_inet(v4(client), v4(lb.addr("pv2")));
        want.extend_from_slice(b"ping");
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn proxy_v2_over_ipv6() {
        let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        };
        drop(probe);
        let backend = TcpBackend::start_on("[::1]:0", echo).await;
        let socket = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let bind = socket.local_addr().unwrap();
        let text = format!(
            "{}\n[[listener]]\nname = \"six\"\nbind = \"{bind}\"\nprotocol = \"tcp\"\npool = \"six\"\n",
            pool("six", &[backend.addr], "proxy_protocol = \"v2\"")
        );
        let config =
            geolb::config::parse_str(&text, std::path::Path::new("/tmp/geolb.toml")).unwrap();
        let id = geolb::state::ListenerId::of(&config.listeners[0]);
        let health = geolb::health::HealthTable::new(tokio_util::sync::CancellationToken::new());
        let snapshot =
            std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(compile(&config, &health)));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(tcp::serve(
            socket,
            tcp::TcpContext::new(snapshot, id, tasks.clone(), shutdown.clone()),
            geolb::accept::Slots::new(None),
        ));

        let stream = TcpStream::connect(bind).await.unwrap();
        let client = stream.local_addr().unwrap();
        let got = bounded(LIMIT, "v2 over IPv6", exchange(stream, b"six".to_vec())).await;
        let mut want = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
        for a in [client, bind] {
            let std::net::IpAddr::V6(ip) = a.ip() else {
                unreachable!()
            };
            want.extend_from_slice(&ip.octets());
        }
        want.extend_from_slice(&client.port().to_be_bytes());
        want.extend_from_slice(&bind.port().to_be_bytes());
        want.extend_from_slice(b"six");
        assert_eq!(got, want);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_tcp_listener_takes_the_client_address_from_a_proxy_header() {
        let backend = TcpBackend::echo().await;
        let lb = Lb::start(
            &pool("fwd", &[backend.addr], "proxy_protocol = \"v1\""),
            &[listener(
                "front",
                "tcp",
                "fwd",
                "accept_proxy_protocol = true\ntimeouts = { header = \"300ms\" }",
            )],
        )
        .await;
        let front = lb.addr("front");

        // v1 in, v1 out: the client's stated addresses pass through.
        let stream = TcpStream::connect(front).await.unwrap();
        let got = bounded(
            LIMIT,
            "v1 in",
            exchange(
                stream,
                b"PROXY TCP4 203.0.113.7 198.51.100.9 4711 443\r\nping".to_vec(),
            ),
        )
        .await;
        assert_eq!(got, b"PROXY TCP4 203.0.113.7 198.51.100.9 4711 443\r\nping");

        // v2 IPv6 in, written onward as v1 TCP6.
        let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
        header.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        header.extend_from_slice(
            &"2001:db8::9"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        header.extend_from_slice(&4711u16.to_be_bytes());
        header.extend_from_slice(&443u16.to_be_bytes());
        header.extend_from_slice(b"ping");
        let stream = TcpStream::connect(front).await.unwrap();
        let got = bounded(LIMIT, "v2 in", exchange(stream, header)).await;
        assert_eq!(got, b"PROXY TCP6 2001:db8::7 2001:db8::9 4711 443\r\nping");

        // v2 LOCAL: the connection's own endpoints.
        let stream = TcpStream::connect(front).await.unwrap();
        let client = stream.local_addr().unwrap();
        let mut local = proxy_protocol::local(geolb::config::ProxyProtocolVersion::V2).to_vec();
        local.extend_from_slice(b"ping");
        let got = bounded(LIMIT, "v2 local", exchange(stream, local)).await;
        let want = format!(
            "PROXY TCP4 {} {} {} {}\r\nping",
            client.ip(),
            front.ip(),
            client.port(),
            front.port()
        );
        assert_eq!(String::from_utf8_lossy(&got), want);

        // No header, a malformed one, and silence: closed, each counted.
        let before = metric(
            &metrics().render(),
            "geolb_proxy_protocol_errors_total",
            &[("listener", "front")],
        )
        .unwrap_or(0.0);
        for attempt in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"",
        ] {
            let mut stream = TcpStream::connect(front).await.unwrap();
            stream.write_all(attempt).await.unwrap();
            let mut buf = Vec::new();
            let _ = bounded(
                Duration::from_secs(3),
                "refused header closes",
                stream.read_to_end(&mut buf),
            )
            .await;
            assert!(buf.is_empty(), "backend reached with {attempt:?}");
        }
        let after = metric(
            &metrics().render(),
            "geolb_proxy_protocol_errors_total",
            &[("listener", "front")],
        );
        assert_eq!(after, Some(before + 3.0));
    }

    #[tokio::test]
    async fn https_picks_certificates_by_sni() {
        let pki = Pki::new();
        let first = pki.leaf("first", &["a.test", "*.wild.test", "127.0.0.1"]);
        let second = pki.leaf("second", &["b.test", "*.b.test"]);
        let web = support::Backend::start("web").await;
        let lb = Lb::start(
            &pool("web", &[web.addr], ""),
            &[listener(
                "tls",
                "https",
                "web",
                &tls_list(&[&first, &second]),
            )],
        )
        .await;
        let addr = lb.addr("tls");
        let client = pki.client(&[]);
        for (sni, want) in [
            ("a.test", &first),
            ("A.Test", &first),
            ("x.wild.test", &first),
            ("b.test", &second),
            ("deep.b.test", &second),
            // An IP address sends no SNI: the first certificate.
            ("127.0.0.1", &first),
        ] {
            let tls = bounded(LIMIT, "handshake", tls_connect(&client, addr, sni))
                .await
                .unwrap_or_else(|e| panic!("{sni}: {e}"));
            let presented = &tls.get_ref().1.peer_certificates().unwrap()[0];
            assert_eq!(presented, &want.der, "certificate for {sni}");
        }
        // An unknown name gets the default certificate, which a verifying
        // client then refuses as not valid for that name.
        let err = tls_connect(&client, addr, "unknown.test")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");
        // Two-level wildcards do not match.
        assert!(tls_connect(&client, addr, "x.y.wild.test").await.is_err());

        let infos = &lb.certs["tls"];
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[1].names, ["b.test", "*.b.test"]);
        assert!(infos[0].seconds_left(std::time::SystemTime::now()) > 0);
    }

    /// One backend behind an `https` listener named "tls" that has a
    /// certificate for site.test.
    async fn https_site() -> (Pki, support::Backend, Lb) {
        let pki = Pki::new();
        let cert = pki.leaf("site", &["site.test"]);
        let web = support::Backend::start("web").await;
        let lb = Lb::start(
            &pool("web", &[web.addr], ""),
            &[listener("tls", "https", "web", &tls_list(&[&cert]))],
        )
        .await;
        (pki, web, lb)
    }

    /// An HTTP/2 client connection to site.test at `addr`, offering
    /// `alpn`; it must agree on h2.
    async fn h2_over_tls(
        pki: &Pki,
        addr: std::net::SocketAddr,
        alpn: &[&[u8]],
    ) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
        use hyper_util::rt::{TokioExecutor, TokioIo};

        let tls = tls_connect(&pki.client(alpn), addr, "site.test")
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    }

    /// Answers to the streams of one HTTP/2 connection over TLS go out
    /// held and written together after each poll of the connection
    /// (`proxy::held_writes`): thirty at once, of a few bytes to 3 MB (past
    /// what is held, written straight), arrive whole.
    #[tokio::test]
    async fn many_streams_of_one_http2_connection_over_tls_get_whole_answers() {
        use http_body_util::{BodyExt, Empty};

        let (pki, _web, lb) = https_site().await;
        let sender = h2_over_tls(&pki, lb.addr("tls"), &[b"h2"]).await;
        let sizes = [1_000usize, 3, 70_000, 1_024, 3_000_000, 256, 65_536, 10];
        let mut asked = tokio::task::JoinSet::new();
        for i in 0..30 {
            let mut sender = sender.clone();
            let n = sizes[i % sizes.len()];
            asked.spawn(async move {
                let req = http::Request::get(format!("https://site.test/bytes?n={n}"))
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (n, body.len(), body.iter().all(|&b| b == b'x'))
            });
        }
        let got = bounded(LIMIT, "thirty streams", asked.join_all()).await;
        assert_eq!(got.len(), 30);
        for (n, len, all_x) in got {
            assert_eq!(len, n, "an answer of {n} bytes");
            assert!(all_x, "an answer of {n} bytes changed");
        }
    }

    #[tokio::test]
    async fn https_serves_h2_and_http11_by_alpn_with_forwarded_proto() {
        use http_body_util::{BodyExt, Empty};

        let (pki, _web, lb) = https_site().await;
        let addr = lb.addr("tls");

        // h2, offered beside http/1.1
        let mut sender = h2_over_tls(&pki, addr, &[b"h2", b"http/1.1"]).await;
        for _ in 0..3 {
            let req = http::Request::get("https://site.test/headers")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = bounded(LIMIT, "h2 request", sender.send_request(req))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains("x-forwarded-proto: https"), "{body}");
            assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
        }

        // http/1.1, by ALPN and without any ALPN.
        for alpn in [&[&b"http/1.1"[..]][..], &[]] {
            let tls = tls_connect(&pki.client(alpn), addr, "site.test")
                .await
                .unwrap();
            let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            assert_eq!(negotiated, alpn.first().map(|p| p.to_vec()));
            let resp = get_headers_http1(tls, "http/1.1 request").await;
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), http::Version::HTTP_11);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(String::from_utf8_lossy(&body).contains("x-forwarded-proto: https"));
        }

        // TLS 1.2 still works.
        let tls = tls_connect(&pki.client_tls12(), addr, "site.test")
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
    }

    #[tokio::test]
    async fn https_with_a_proxy_header_forwards_the_stated_client() {
        use http_body_util::BodyExt;

        let pki = Pki::new();
        let cert = pki.leaf("site", &["site.test"]);
        let web = support::Backend::start("web").await;
        let lb = Lb::start(
            &pool("web", &[web.addr], ""),
            &[listener(
                "tls",
                "https",
                "web",
                &format!("{}\naccept_proxy_protocol = true", tls_list(&[&cert])),
            )],
        )
        .await;
        let mut tcp = TcpStream::connect(lb.addr("tls")).await.unwrap();
        tcp.write_all(b"PROXY TCP4 203.0.113.7 198.51.100.9 4711 443\r\n")
            .await
            .unwrap();
        let tls = pki
            .client(&[b"http/1.1"])
            .connect("site.test".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let resp = get_headers_http1(tls, "request").await;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("x-forwarded-for: 203.0.113.7\n"), "{body}");
    }

    #[tokio::test]
    async fn a_slow_handshake_is_cut_at_the_header_timeout() {
        let pki = Pki::new();
        let cert = pki.leaf("site", &["site.test"]);
        let lb = Lb::start(
            &pool("web", &[support::refused_addr()], ""),
            &[listener(
                "slowtls",
                "https",
                "web",
                &format!(
                    "{}\ntimeouts = {{ header = \"300ms\" }}",
                    tls_list(&[&cert])
                ),
            )],
        )
        .await;
        let mut tcp = TcpStream::connect(lb.addr("slowtls")).await.unwrap();
        let started = std::time::Instant::now();
        // The start of a record header, then nothing.
        tcp.write_all(b"\x16\x03\x01").await.unwrap();
        let mut buf = Vec::new();
        let _ = bounded(
            Duration::from_secs(3),
            "handshake deadline",
            tcp.read_to_end(&mut buf),
        )
        .await;
        assert!(started.elapsed() >= Duration::from_millis(290));
        let text = metrics().render();
        assert!(
            metric(
                &text,
                "geolb_tls_handshake_errors_total",
                &[("listener", "slowtls")]
            )
            .is_some_and(|n| n >= 1.0),
            "{text}"
        );
    }

    #[test]
    fn tls_config_errors_name_the_file_and_key_path() {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.test"]);
        let b = pki.leaf("b", &["b.test"]);
        let dir = pki.dir.path();
        let entry = |cert: &std::path::Path, key: &std::path::Path| geolb::config::TlsCertConfig {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            ocsp: Default::default(),
        };

        // A key that belongs to another certificate.
        let errors =
            tls::server_config(2, &[entry(&a.cert, &a.key), entry(&a.cert, &b.key)]).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "listener[2].tls[1].key");
        let shown = errors[0].to_string();
        assert!(shown.contains(&path_str(&b.key)), "{shown}");
        assert!(shown.contains("does not match the certificate"), "{shown}");
        assert!(shown.contains(&path_str(&a.cert)), "{shown}");

        // Missing files, a certificate file without certificates, a key file
        // without a key: every one reported, each at its own key path.
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let missing = dir.join("missing.key");
        let errors = tls::server_config(
            0,
            &[
                entry(&empty, &a.key),
                entry(&a.cert, &missing),
                entry(&b.key, &b.cert),
            ],
        )
        .unwrap_err();
        let shown: Vec<(String, String)> = errors
            .iter()
            .map(|e| (e.path.clone(), e.to_string()))
            .collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert_eq!(shown[0].0, "listener[0].tls[0].cert");
        assert!(shown[0].1.contains("no certificate"), "{shown:#?}");
        assert_eq!(shown[1].0, "listener[0].tls[1].key");
        assert!(shown[1].1.contains("cannot read"), "{shown:#?}");
        assert!(shown[1].1.contains(&path_str(&missing)), "{shown:#?}");
        assert_eq!(shown[2].0, "listener[0].tls[2].cert");
        assert_eq!(shown[3].0, "listener[0].tls[2].key");
        assert!(shown[3].1.contains("no private key"), "{shown:#?}");
    }

    #[test]
    fn an_expired_certificate_loads_and_reports_its_expiry() {
        let pki = Pki::new();
        let old = pki.leaf_with("old", &["old.test"], |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        });
        let (_, infos) = tls::server_config(
            0,
            &[geolb::config::TlsCertConfig {
                cert: old.cert.clone(),
                key: old.key.clone(),
                ocsp: Default::default(),
            }],
        )
        .expect("an expired certificate still loads");
        assert_eq!(infos[0].not_after, 1_577_836_800);
        assert_eq!(infos[0].cert, old.cert);
        assert!(infos[0].seconds_left(std::time::SystemTime::now()) < 0);
    }
}

/// Through `geolb run` and `geolb check`: what app.rs wires (listeners by
/// protocol, PROXY headers on http listeners, TLS reloads, /metrics).
/// GET `path` over HTTP/1.1 with `Connection: close` (plus `extra` header
/// lines); the status and the whole rest of the response.
async fn get_close(addr: std::net::SocketAddr, path: &str, extra: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answer(stream).await
}

/// The status and the whole text of an answer read to its end.
async fn read_answer(mut stream: TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    bounded(LIMIT, "response", stream.read_to_end(&mut got))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    (status, text)
}

/// Backends spoken to over TLS and HTTP/2 (`tls`, `backend_protocol`).
mod upstream {
    use super::*;

    #[tokio::test]
    async fn tls_backends_are_verified_against_the_pools_settings() {
        let pki = Pki::new();
        let leaf = pki.leaf("origin", &["origin.test", "127.0.0.1"]);
        let origin = Origin::start(Some(pki.acceptor_alpn(&leaf, &[b"h2", b"http/1.1"]))).await;
        let ca = path_str(&pki.ca_file());
        let cases = [
            ("by-ip", format!("tls = {{ ca = {ca:?} }}"), 200),
            (
                "by-sni",
                format!("tls = {{ ca = {ca:?}, sni = \"origin.test\" }}"),
                200,
            ),
            (
                "wrong-name",
                format!("tls = {{ ca = {ca:?}, sni = \"other.test\" }}"),
                502,
            ),
            // The bundled Mozilla roots do not know the test CA.
            ("untrusted", "tls = true".to_owned(), 502),
            (
                "unverified",
                "tls = { verify = false, sni = \"anything\" }".to_owned(),
                200,
            ),
        ];
        let pools: String = cases
            .iter()
            .map(|(name, extra, _)| pool(name, &[origin.addr], extra))
            .collect();
        let listeners: Vec<ListenerSpec> = cases
            .iter()
            .map(|(name, _, _)| listener(name, "http", name, "retries = 0"))
            .collect();
        let lb = Lb::start(&pools, &listeners).await;
        for (name, _, want) in &cases {
            let (status, text) = get_close(lb.addr(name), "/path?q=1", "").await;
            assert_eq!(status, *want, "{name}: {text}");
            if *want == 200 {
                assert!(
                    text.ends_with("HTTP/1.1 GET /path?q=1 host=site.test proto=http"),
                    "{name}: {text}"
                );
            } else {
                assert!(text.contains("TLS"), "{name}: the reason is given: {text}");
                // The TLS error, with the backend's address and names, is
                // for the log only.
                assert!(
                    !text.contains("127.0.0.1") && !text.contains("origin.test"),
                    "{name}: the body names the backend: {text}"
                );
            }
        }
    }

    #[tokio::test]
    async fn tls_backend_connections_are_kept_alive() {
        let pki = Pki::new();
        let leaf = pki.leaf("origin", &["127.0.0.1"]);
        let origin = Origin::start(Some(pki.acceptor(&leaf))).await;
        let ca = path_str(&pki.ca_file());
        let lb = Lb::start(
            &pool("tls", &[origin.addr], &format!("tls = {{ ca = {ca:?} }}")),
            &[listener("web", "http", "tls", "")],
        )
        .await;
        // One client connection, requests one after another: the backend
        // connection (and its handshake) is reused.
        let mut client = TcpStream::connect(lb.addr("web")).await.unwrap();
        for i in 0..5 {
            client
                .write_all(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let want = format!("HTTP/1.1 GET /{i} host=x proto=http");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).ends_with(&want) {
                let n = bounded(LIMIT, "response", client.read(&mut buf))
                    .await
                    .unwrap();
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(
            origin.connections.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }

    #[tokio::test]
    async fn http2_backends_cleartext_and_over_tls() {
        let pki = Pki::new();
        let leaf = pki.leaf("origin", &["127.0.0.1"]);
        let h2c = Origin::start(None).await;
        let h2 = Origin::start(Some(pki.acceptor_alpn(&leaf, &[b"h2", b"http/1.1"]))).await;
        // A server without ALPN at all completes the handshake with none.
        let http1_only = Origin::start(Some(pki.acceptor(&leaf))).await;
        let ca = path_str(&pki.ca_file());
        let pools = format!(
            "{}{}{}",
            pool("h2c", &[h2c.addr], "backend_protocol = \"h2c\""),
            pool(
                "h2",
                &[h2.addr],
                &format!("backend_protocol = \"h2\"\ntls = {{ ca = {ca:?} }}")
            ),
            pool(
                "no-alpn",
                &[http1_only.addr],
                &format!("backend_protocol = \"h2\"\ntls = {{ ca = {ca:?} }}")
            ),
        );
        let lb = Lb::start(
            &pools,
            &[
                listener("h2c", "http", "h2c", ""),
                listener("h2", "http", "h2", ""),
                listener("no-alpn", "http", "no-alpn", "retries = 0"),
            ],
        )
        .await;
        for (name, scheme) in [("h2c", "http"), ("h2", "https")] {
            // Concurrent requests share one HTTP/2 connection.
            let addr = lb.addr(name);
            let requests: Vec<_> = (0..8)
                .map(|i| tokio::spawn(async move { get_close(addr, &format!("/r{i}"), "").await }))
                .collect();
            for (i, r) in requests.into_iter().enumerate() {
                let (status, text) = r.await.unwrap();
                assert_eq!(status, 200, "{name}: {text}");
                // Host travels as :authority (RFC 9113 §8.3.1), not as a header.
                let want = format!("HTTP/2.0 GET {scheme}://site.test/r{i} host=- proto=http");
                assert!(text.ends_with(&want), "{name}: {text}");
            }
        }
        let opened = |o: &Origin| o.connections.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            opened(&h2c) <= 2 && opened(&h2) <= 2,
            "h2c {} h2 {}",
            opened(&h2c),
            opened(&h2)
        );

        let (status, text) = get_close(lb.addr("no-alpn"), "/", "").await;
        assert_eq!(status, 502, "{text}");
        assert!(text.contains("did not agree to h2"), "{text}");

        // An HTTP/1.1 upgrade cannot travel over HTTP/2 to the backend.
        let (status, text) = get_close(
            lb.addr("h2c"),
            "/ws",
            "Upgrade: websocket\r\nConnection: upgrade\r\n",
        )
        .await;
        assert_eq!(status, 502, "{text}");
        assert!(text.contains("HTTP/2"), "{text}");
    }

    /// An h2c backend that answers `len=N` once it has read a request's
    /// whole body, and drops every connection when told to.
    struct CountingOrigin {
        addr: std::net::SocketAddr,
        connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        drop_all: std::sync::Arc<tokio::sync::Notify>,
        _backend: TcpBackend,
    }

    impl CountingOrigin {
        async fn start() -> CountingOrigin {
            use http_body_util::{BodyExt, Full};
            use hyper::body::Bytes;
            let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let drop_all = std::sync::Arc::new(tokio::sync::Notify::new());
            let (counter, dropper) = (connections.clone(), drop_all.clone());
            let backend = TcpBackend::start(move |stream| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let dropped = dropper.clone();
                async move {
                    let service = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let text = format!("len={}", body.len());
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(
                                text,
                            ))))
                        },
                    );
                    let serve = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    let told = dropped.notified();
                    tokio::select! {
                        _ = serve => {}
                        _ = told => {}
                    }
                }
            })
            .await;
            CountingOrigin {
                addr: backend.addr,
                connections,
                drop_all,
                _backend: backend,
            }
        }
    }

    /// An HTTP/2 backend written with the `h2` crate: `stream` handles each
    /// stream it accepts, in a task of its own.
    async fn h2_origin<F, Fut>(stream: F) -> TcpBackend
    where
        F: Fn(http::Request<h2::RecvStream>, h2::server::SendResponse<bytes::Bytes>) -> Fut
            + Clone
            + Send
            + Sync
            + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        TcpBackend::start(move |tcp| {
            let stream = stream.clone();
            async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(stream(req, respond));
                }
            }
        })
        .await
    }

    /// A stream the backend refuses (RST_STREAM REFUSED_STREAM: it did not
    /// act on the request, RFC 9113 §8.7) is a request closed without an
    /// answer: sent again to another backend, as after a reset connection.
    #[tokio::test]
    async fn a_stream_an_http2_backend_refuses_is_sent_to_another() {
        let refusing = h2_origin(|_req, mut respond| async move {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
        })
        .await;
        let answering = h2_origin(|_req, mut respond| async move {
            if let Ok(mut body) = respond.send_response(http::Response::new(()), false) {
                let _ = body.send_data(bytes::Bytes::from_static(b"from b"), true);
            }
        })
        .await;
        let lb = Lb::start(
            &pool(
                "p",
                &[refusing.addr, answering.addr],
                "backend_protocol = \"h2c\"\nbalance = \"round_robin\"",
            ),
            &[listener("web", "http", "p", "")],
        )
        .await;
        for i in 0..4 {
            let (status, text) = get_close(lb.addr("web"), &format!("/r{i}"), "").await;
            assert_eq!(status, 200, "request {i}: {text}");
            assert!(text.contains("\r\nfrom b\r\n"), "request {i}: {text}");
        }
    }

    /// A hand-written HTTP/2 backend: each connection's preface read and
    /// an empty SETTINGS sent, then `serve`d, told whether it is the
    /// first; beside it the count of connections it took.
    async fn raw_h2_origin<F, Fut>(
        serve: F,
    ) -> (TcpBackend, std::sync::Arc<std::sync::atomic::AtomicUsize>)
    where
        F: Fn(bool, tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf) -> Fut
            + Clone
            + Send
            + Sync
            + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = connections.clone();
        let origin = TcpBackend::start(move |tcp| {
            let first = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            let serve = serve.clone();
            async move {
                let (mut read, mut write) = tcp.into_split();
                let mut preface = [0u8; 24];
                if read.read_exact(&mut preface).await.is_err() {
                    return;
                }
                let settings = support::h2::frame(support::h2::SETTINGS, 0, 0, &[]);
                let _ = write.write_all(&settings).await;
                serve(first, read, write).await;
            }
        })
        .await;
        (origin, connections)
    }

    /// A backend closing gracefully (GOAWAY with NO_ERROR, as nginx does
    /// after `keepalive_requests`) names the last stream it took; the
    /// streams after it were not acted on, and are sent again on a new
    /// connection to the same backend (the pool's only one, which a retry
    /// would not take again): no 502.
    #[tokio::test]
    async fn streams_past_a_graceful_goaway_are_sent_again_on_a_new_connection() {
        use support::h2::{ACK, GOAWAY, HEADERS, SETTINGS, frame, read_frame};
        const REQUESTS: usize = 4;
        let (origin, connections) = raw_h2_origin(|first, mut read, mut write| async move {
            let mut streams = Vec::new();
            while let Some(f) = read_frame(&mut read).await {
                match f.kind {
                    SETTINGS if f.flags & ACK == 0 => {
                        let _ = write.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    HEADERS => streams.push(f.stream),
                    _ => {}
                }
                // :status 200 (static index 8), END_STREAM | END_HEADERS.
                let ok = |stream| frame(HEADERS, 0x5, stream, &[0x88]);
                if !first {
                    for stream in streams.drain(..) {
                        let _ = write.write_all(&ok(stream)).await;
                    }
                } else if streams.len() == REQUESTS {
                    // The first stream answered, the rest past the GOAWAY.
                    let mut goaway = streams[0].to_be_bytes().to_vec();
                    goaway.extend(0u32.to_be_bytes());
                    let _ = write.write_all(&ok(streams[0])).await;
                    let _ = write.write_all(&frame(GOAWAY, 0, 0, &goaway)).await;
                    return;
                }
            }
        })
        .await;
        let lb = Lb::start(
            &pool("p", &[origin.addr], "backend_protocol = \"h2c\""),
            &[listener("web", "http", "p", "")],
        )
        .await;
        let addr = lb.addr("web");
        let requests: Vec<_> = (0..REQUESTS)
            .map(|i| tokio::spawn(async move { get_close(addr, &format!("/r{i}"), "").await }))
            .collect();
        for (i, r) in requests.into_iter().enumerate() {
            let (status, text) = r.await.unwrap();
            assert_eq!(status, 200, "request {i}: {text}");
        }
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// nginx's case with a body: the backend took a POST's whole body,
    /// then closed gracefully with a GOAWAY naming no stream. The request
    /// goes again, its body whole, on a new connection.
    #[tokio::test]
    async fn a_request_body_past_a_graceful_goaway_is_sent_again_on_a_new_connection() {
        use support::h2::{ACK, DATA, GOAWAY, HEADERS, SETTINGS, frame, read_frame};
        const END_STREAM: u8 = 0x1;
        let (origin, connections) = raw_h2_origin(|first, mut read, mut write| async move {
            let mut received = std::collections::HashMap::new();
            while let Some(f) = read_frame(&mut read).await {
                match f.kind {
                    SETTINGS if f.flags & ACK == 0 => {
                        let _ = write.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    HEADERS | DATA => {
                        *received.entry(f.stream).or_insert(0) +=
                            f.payload.len() * usize::from(f.kind == DATA);
                    }
                    _ => {}
                }
                if f.flags & END_STREAM == 0 || !matches!(f.kind, HEADERS | DATA) {
                    continue;
                }
                if first {
                    let _ = write.write_all(&frame(GOAWAY, 0, 0, &[0; 8])).await;
                    return;
                }
                // :status 200 (static index 8), END_HEADERS; then the
                // body's length as the answer's body.
                let len = received.get(&f.stream).copied().unwrap_or(0);
                let _ = write
                    .write_all(&frame(HEADERS, 0x4, f.stream, &[0x88]))
                    .await;
                let text = format!("len={len}");
                let answer = frame(DATA, END_STREAM, f.stream, text.as_bytes());
                let _ = write.write_all(&answer).await;
            }
        })
        .await;
        let lb = Lb::start(
            &pool("p", &[origin.addr], "backend_protocol = \"h2c\""),
            &[listener("web", "http", "p", "")],
        )
        .await;
        let (status, text) =
            bounded(LIMIT, "an answer", post_to(lb.addr("web"), "/up", 30_000)).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("\r\nlen=30000\r\n"), "{text}");
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A backend that is not HTTP/2 at all behind `h2c` (an HTTP/1.1 server,
    /// or one sending garbage frames) is a 502 at once, never a hang.
    #[tokio::test]
    async fn an_h2c_backend_that_speaks_something_else_is_a_502() {
        let http1 = TcpBackend::start(|mut tcp| async move {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            let mut sink = [0u8; 1024];
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        let garbage = TcpBackend::start(|mut tcp| async move {
            let mut preface = [0u8; 24];
            if tcp.read_exact(&mut preface).await.is_ok() {
                use support::h2::{HEADERS, SETTINGS, frame};
                // A SETTINGS frame, then a HEADERS frame on stream 0.
                let _ = tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await;
                let _ = tcp
                    .write_all(&frame(HEADERS, 0x4, 0, &[0xff, 0xff, 0xff]))
                    .await;
            }
            let mut sink = [0u8; 1024];
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        let lb = Lb::start(
            &format!(
                "{}{}",
                pool("http1", &[http1.addr], "backend_protocol = \"h2c\""),
                pool("garbage", &[garbage.addr], "backend_protocol = \"h2c\"")
            ),
            &[
                listener("http1", "http", "http1", "retries = 0"),
                listener("garbage", "http", "garbage", "retries = 0"),
            ],
        )
        .await;
        for name in ["http1", "garbage"] {
            let (status, text) = get_close(lb.addr(name), "/", "").await;
            assert_eq!(status, 502, "{name}: {text}");
        }
    }

    /// A request that times out while its body is still going up (the
    /// client's fault here: 408) has its stream reset with CANCEL, so that
    /// the backend stops waiting for the rest; not left open until the
    /// client goes.
    #[tokio::test]
    async fn an_upload_that_times_out_has_its_http2_stream_cancelled() {
        let (told, mut resets) = tokio::sync::mpsc::unbounded_channel();
        let origin = h2_origin(move |req, _respond| {
            let told = told.clone();
            async move {
                // Reads the body, never answers.
                let mut body = req.into_body();
                let reason = loop {
                    match body.data().await {
                        Some(Ok(data)) => {
                            let _ = body.flow_control().release_capacity(data.len());
                        }
                        Some(Err(e)) => break e.reason(),
                        None => break None,
                    }
                };
                let _ = told.send(reason);
                drop(_respond);
            }
        })
        .await;
        let lb = Lb::start(
            &pool("p", &[origin.addr], "backend_protocol = \"h2c\""),
            &[listener(
                "web",
                "http",
                "p",
                "retries = 0\ntimeouts = { request = \"1s\" }",
            )],
        )
        .await;
        let mut client = TcpStream::connect(lb.addr("web")).await.unwrap();
        client
            .write_all(b"POST /up HTTP/1.1\r\nHost: site.test\r\nContent-Length: 1000000\r\n\r\n")
            .await
            .unwrap();
        client.write_all(&[b'u'; 10_000]).await.unwrap();
        // The client stays, sending no more.
        let reason = bounded(LIMIT, "the backend's stream to end", resets.recv()).await;
        assert_eq!(reason, Some(Some(h2::Reason::CANCEL)));
        let mut answer = vec![0u8; 4096];
        let n = bounded(LIMIT, "the 408", client.read(&mut answer))
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }

    async fn post_close(addr: std::net::SocketAddr, len: usize) -> (u16, String) {
        post_to(addr, "/p", len).await
    }

    async fn post_to(addr: std::net::SocketAddr, path: &str, len: usize) -> (u16, String) {
        post_paced(addr, path, len, None).await
    }

    /// Byte `i` of a body `post_paced` sends: one out of place shows.
    fn pattern_byte(i: usize) -> u8 {
        (i % 251) as u8
    }

    /// Reads a body of `pattern_byte`s and answers its length and whether
    /// every byte was in its place; with `refuse_past`, refuses the stream
    /// (REFUSED_STREAM) once that many bytes came instead.
    async fn answer_pattern(
        mut body: h2::RecvStream,
        mut respond: h2::server::SendResponse<bytes::Bytes>,
        refuse_past: Option<usize>,
    ) {
        let (mut len, mut in_order) = (0usize, true);
        while let Some(data) = body.data().await {
            let Ok(data) = data else { return };
            let _ = body.flow_control().release_capacity(data.len());
            in_order &= data.iter().zip(len..).all(|(b, i)| *b == pattern_byte(i));
            len += data.len();
            if refuse_past.is_some_and(|past| len >= past) {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                return;
            }
        }
        if let Ok(mut out) = respond.send_response(http::Response::new(()), false) {
            let text = format!("len={len} in_order={in_order}");
            let _ = out.send_data(bytes::Bytes::from(text), true);
        }
    }

    /// The head and body in one write, or the body `after` the head.
    async fn post_paced(
        addr: std::net::SocketAddr,
        path: &str,
        len: usize,
        after: Option<Duration>,
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: site.test\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        if let Some(after) = after {
            stream.write_all(&request).await.unwrap();
            tokio::time::sleep(after).await;
            request.clear();
        }
        request.extend((0..len).map(pattern_byte));
        stream.write_all(&request).await.unwrap();
        read_answer(stream).await
    }

    /// A request with a body that an HTTP/2 backend did not act on (its
    /// stream refused: RFC 9113 §8.7; a GOAWAY past it is the same case)
    /// is sent again with its body whole, as long as the body is no more
    /// than geolb keeps (64 KiB): the body goes again from its first byte,
    /// then whatever of it the client had not sent yet, every byte in its
    /// place. One declared larger is not kept: it fails (502), promptly.
    #[tokio::test]
    async fn a_request_body_an_http2_backend_did_not_act_on_is_sent_again_whole() {
        let refused = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        // Each path's first stream refused, the next read whole.
        let origin = h2_origin(move |req, mut respond| {
            let refused = refused.clone();
            async move {
                if refused.lock().unwrap().insert(req.uri().path().to_owned()) {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    return;
                }
                answer_pattern(req.into_body(), respond, None).await;
            }
        })
        .await;
        let lb = Lb::start(
            &pool("p", &[origin.addr], "backend_protocol = \"h2c\""),
            &[listener("web", "http", "p", "")],
        )
        .await;
        let addr = lb.addr("web");
        // 65,536: the bound itself, and one byte past the stream's first
        // window, so the refusal finds some of it not yet read.
        // With the head (sent from the request's task), and 100 ms after
        // it (the rest from a task of its own).
        let paces = [None, Some(Duration::from_millis(100))];
        for (len, after) in [1usize, 20_000, 65_536]
            .into_iter()
            .flat_map(|n| paces.map(|p| (n, p)))
        {
            let path = format!("/{len}/{}", after.is_some());
            let (status, text) =
                bounded(LIMIT, "an answer", post_paced(addr, &path, len, after)).await;
            assert_eq!(status, 200, "{len} bytes, body after {after:?}: {text}");
            assert!(
                text.contains(&format!("\r\nlen={len} in_order=true\r\n")),
                "{len} bytes: {text}"
            );
        }
        let (status, text) = bounded(LIMIT, "an answer", post_to(addr, "/big", 100_000)).await;
        assert_eq!(status, 502, "{text}");
        // Sent again, it is read whole.
        let (status, text) = post_to(addr, "/big", 100_000).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("\r\nlen=100000 in_order=true\r\n"), "{text}");
    }

    /// A chunked body the backend refuses midway (having read 10,000 of its
    /// bytes) goes again in order: what had gone (its first two chunks as
    /// they were, the rest copied into one), then the chunks still coming.
    #[tokio::test]
    async fn a_chunked_body_refused_midway_is_sent_again_in_order() {
        const CHUNKS: usize = 30;
        const CHUNK: usize = 1_000;
        let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = tries.clone();
        let origin = h2_origin(move |req, respond| {
            let first = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move {
                let refuse_past = first.then_some(10_000);
                answer_pattern(req.into_body(), respond, refuse_past).await;
            }
        })
        .await;
        let lb = Lb::start(
            &pool("p", &[origin.addr], "backend_protocol = \"h2c\""),
            &[listener("web", "http", "p", "")],
        )
        .await;
        let mut stream = TcpStream::connect(lb.addr("web")).await.unwrap();
        let head = "POST /up HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        for c in 0..CHUNKS {
            let bytes: Vec<u8> = (c * CHUNK..(c + 1) * CHUNK).map(pattern_byte).collect();
            let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
            chunk.extend(bytes);
            chunk.extend(b"\r\n");
            stream.write_all(&chunk).await.unwrap();
            // Read as chunks of their own, some before the refusal.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stream.write_all(b"0\r\n\r\n").await.unwrap();
        let (status, text) = read_answer(stream).await;
        assert_eq!(status, 200, "{text}");
        let whole = format!("\r\nlen={} in_order=true\r\n", CHUNKS * CHUNK);
        assert!(text.contains(&whole), "{text}");
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A stream the backend reset for another reason than not acting on
    /// it (INTERNAL_ERROR) may have been acted on: a POST is not sent
    /// again (502), and the backend saw one stream.
    #[tokio::test]
    async fn a_request_body_an_http2_backend_may_have_acted_on_is_not_sent_again() {
        let streams = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = streams.clone();
        let origin = h2_origin(move |_req, mut respond| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { respond.send_reset(h2::Reason::INTERNAL_ERROR) }
        })
        .await;
        let lb = Lb::start(
            &pool("p", &[origin.addr], "backend_protocol = \"h2c\""),
            &[listener("web", "http", "p", "")],
        )
        .await;
        let (status, text) = bounded(LIMIT, "an answer", post_to(lb.addr("web"), "/", 1_000)).await;
        assert_eq!(status, 502, "{text}");
        assert_eq!(streams.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// Request bodies larger than a stream's first window arrive whole
    /// (`upstream::h2_client`'s pipe waits for the window) while other
    /// requests share the connection, and a connection the backend drops
    /// is replaced.
    #[tokio::test]
    async fn http2_backend_bodies_arrive_whole_and_a_dropped_connection_is_replaced() {
        let origin = CountingOrigin::start().await;
        let lb = Lb::start(
            &pool("h2c", &[origin.addr], "backend_protocol = \"h2c\""),
            &[listener("h2c", "http", "h2c", "")],
        )
        .await;
        let addr = lb.addr("h2c");
        // 0 and 1 byte, and past h2's 65,535-byte first window.
        let sizes = [0usize, 1, 70_000, 300_000, 5, 200_000];
        let requests: Vec<_> = sizes
            .iter()
            .map(|&len| tokio::spawn(async move { (len, post_close(addr, len).await) }))
            .collect();
        for r in requests {
            let (len, (status, text)) = r.await.unwrap();
            assert_eq!(status, 200, "{len} bytes: {text}");
            assert!(text.ends_with(&format!("len={len}")), "{len} bytes: {text}");
        }
        let opened = || origin.connections.load(std::sync::atomic::Ordering::SeqCst);
        let before = opened();
        assert!((1..=2).contains(&before), "{before} connections");

        origin.drop_all.notify_waiters();
        eventually(
            "a request answered after the backend dropped its connections",
            LIMIT,
            || async {
                let (status, text) = post_close(addr, 70_000).await;
                status == 200 && text.ends_with("len=70000")
            },
        )
        .await;
        assert!(opened() > before, "no new connection: {}", opened());
    }
}

mod binary {
    use super::support::{Backend, Geolb, eventually, geolb_check};
    use super::*;

    #[test]
    fn check_gives_the_line_of_a_key_that_does_not_match_its_certificate() {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.test"]);
        let b = pki.leaf("b", &["b.test"]);
        let (a_cert, a_key, b_key) = (path_str(&a.cert), path_str(&a.key), path_str(&b.key));
        let config = format!(
            "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"127.0.0.1:9\" }}]\n\
             [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\npool = \"p\"\n\
             [[listener.tls]]\ncert = {a_cert:?}\nkey = {a_key:?}\n\
             [[listener.tls]]\ncert = {a_cert:?}\nkey = {b_key:?}\n"
        );
        assert_eq!(
            config.lines().nth(13),
            Some(format!("key = {b_key:?}").as_str())
        );
        let (ok, _, stderr) = geolb_check(&config);
        assert!(!ok);
        assert!(
            stderr.contains(&format!(
                "line 14: listener[0].tls[1].key = {b_key:?}: does not match"
            )),
            "{stderr}"
        );
    }

    #[tokio::test]
    async fn https_health_checks_verify_the_backend_certificate() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU16, Ordering};
        let pki = Pki::new();
        let leaf = pki.leaf("backend", &["backend.test"]);
        let acceptor = pki.acceptor(&leaf);
        let status = Arc::new(AtomicU16::new(200));
        let answer = status.clone();
        let backend = TcpBackend::start(move |stream| {
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let code = answer.load(Ordering::SeqCst);
                let reply =
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        })
        .await;
        let ca = pki.ca_file();
        let check = |extra: &str| {
            format!(
                "check = {{ kind = \"https\", path = \"/health\", interval = \"100ms\", timeout = \"1s\", rise = 1, fall = 1, {extra} }}"
            )
        };
        let pools = [
            (
                "good",
                check(&format!(
                    "host = \"backend.test\", ca = \"{}\"",
                    path_str(&ca)
                )),
            ),
            (
                "wrong-name",
                check(&format!(
                    "host = \"other.test\", ca = \"{}\"",
                    path_str(&ca)
                )),
            ),
            ("untrusted", check("host = \"backend.test\"")),
            ("unverified", check("host = \"anything\", verify = false")),
        ];
        let mut cfg = String::new();
        for (name, extra) in &pools {
            cfg.push_str(&pool(name, &[backend.addr], extra));
        }
        cfg.push_str("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"good\"\n");
        let geolb = Geolb::start(&config(&cfg)).await;
        for (name, want) in [
            ("good", "up"),
            ("wrong-name", "down"),
            ("untrusted", "down"),
            ("unverified", "up"),
        ] {
            assert_eq!(
                geolb.backend_state(name, backend.addr).await,
                want,
                "{name}: {}",
                geolb.log()
            );
        }
        status.store(503, Ordering::SeqCst);
        eventually("the good check sees the 503", LIMIT, || async {
            geolb.backend_state("good", backend.addr).await == "down"
        })
        .await;
        let (ok, _, stderr) = geolb_check(&config(&pool(
            "p",
            &[backend.addr],
            "check = { kind = \"https\", ca = \"/nonexistent/ca.pem\" }",
        )));
        assert!(!ok);
        assert!(stderr.contains("pool[0].check.ca"), "{stderr}");
        let (ok, _, stderr) = geolb_check(&config(&pool(
            "p",
            &[backend.addr],
            "check = { kind = \"http\", verify = false }",
        )));
        assert!(!ok);
        assert!(stderr.contains("verify"), "{stderr}");
    }

    #[tokio::test]
    async fn a_tls_pools_ca_file_is_checked_like_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let addr = support::refused_addr();
        for (ca, want) in [
            (dir.path().join("missing.pem"), "pool[0].tls.ca"),
            (empty, "no PEM certificate"),
        ] {
            let (ok, stdout, stderr) = geolb_check(&config(&pool(
                "p",
                &[addr],
                &format!("tls = {{ ca = {:?} }}", path_str(&ca)),
            )));
            assert!(!ok, "{stdout}{stderr}");
            assert!(stderr.contains(want), "{stderr}");
            assert!(stderr.contains(&path_str(&ca)), "{stderr}");
        }
    }

    fn config(body: &str) -> String {
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\nshutdown_grace = \"2s\"\n\n{body}")
    }

    #[tokio::test]
    async fn tcp_listener_with_proxy_v2_and_metrics() {
        let backend = TcpBackend::echo().await;
        let geolb = Geolb::start(&config(&format!(
            "{}\n[[listener]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"db\"\n",
            pool(
                "db",
                &[backend.addr],
                "proxy_protocol = \"v2\"\ncheck = { kind = \"tcp\", interval = \"200ms\", timeout = \"500ms\" }"
            )
        )))
        .await;
        let db = geolb.listener("db");
        let stream = TcpStream::connect(db).await.unwrap();
        let client = stream.local_addr().unwrap();
        let data = pattern(11, 8 << 20);
        let got = bounded(
            LIMIT,
            "8 MiB through the binary",
            exchange(stream, data.clone()),
        )
        .await;
        let header = v2_inet(v4(client), v4(db));
        assert_eq!(&got[..header.len()], &header[..]);
        assert!(got[header.len()..] == data[..], "payload differs");

        let text = geolb.metrics().await;
        let labels = [("listener", "db"), ("pool", "db")];
        assert_eq!(
            metric(&text, "geolb_tcp_connections_total", &labels),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            metric(
                &text,
                "geolb_tcp_bytes_total",
                &[labels[0], labels[1], ("direction", "in")]
            ),
            Some(data.len() as f64),
            "{text}"
        );
        promtool_check(&text);
    }

    #[tokio::test]
    async fn http_listener_takes_the_client_address_from_a_proxy_header() {
        let web = Backend::start("web").await;
        let geolb = Geolb::start(&config(&format!(
            "{}\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\naccept_proxy_protocol = true\ntimeouts = {{ header = \"500ms\" }}\n",
            pool("web", &[web.addr], "")
        )))
        .await;
        let addr = geolb.listener("web");
        let answer = super::support::raw(
            addr,
            b"PROXY TCP4 203.0.113.7 198.51.100.9 4711 80\r\nGET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(
            answer.contains("x-forwarded-for: 203.0.113.7\n"),
            "{answer}"
        );

        let refused = super::support::raw(
            addr,
            b"GET /headers HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(refused, "", "a request without a PROXY header was served");
        let text = geolb.metrics().await;
        assert_eq!(
            metric(
                &text,
                "geolb_proxy_protocol_errors_total",
                &[("listener", "web")]
            ),
            Some(1.0),
            "{text}"
        );
    }

    #[tokio::test]
    async fn https_listener_with_sni_h2_and_expiry_metric() {
        use http_body_util::{BodyExt, Empty};
        use hyper_util::rt::{TokioExecutor, TokioIo};

        let pki = Pki::new();
        let first = pki.leaf("first", &["a.test"]);
        let second = pki.leaf("second", &["b.test"]);
        let web = Backend::start("web").await;
        let geolb = Geolb::start(&config(&format!(
            "{}\n[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\npool = \"web\"\n{}\n",
            pool("web", &[web.addr], ""),
            tls_list(&[&first, &second])
        )))
        .await;
        let addr = geolb.listener("tls");
        let client = pki.client(&[b"h2", b"http/1.1"]);
        for (sni, want) in [("a.test", &first), ("b.test", &second)] {
            let tls = tls_connect(&client, addr, sni).await.unwrap();
            assert_eq!(&tls.get_ref().1.peer_certificates().unwrap()[0], &want.der);
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = http::Request::get(format!("https://{sni}/headers"))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = bounded(LIMIT, "h2 via the binary", sender.send_request(req))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(String::from_utf8_lossy(&body).contains("x-forwarded-proto: https"));
        }
        let text = geolb.metrics().await;
        for leaf in [&first, &second] {
            let left = metric(
                &text,
                "geolb_tls_certificate_expiry_seconds",
                &[("listener", "tls"), ("cert", &path_str(&leaf.cert))],
            );
            assert!(left.is_some_and(|s| s > 86_400.0), "{text}");
        }
        promtool_check(&text);

        // New files at the same paths and a reload: new handshakes get the
        // new certificate, without a restart.
        let renewed = pki.leaf("first", &["a.test"]);
        assert_ne!(renewed.der, first.der);
        let (code, _, body) =
            super::support::request(geolb.admin, "POST", "/reload", &[], bytes::Bytes::new())
                .await
                .unwrap();
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let tls = tls_connect(&client, addr, "a.test").await.unwrap();
        assert_eq!(
            &tls.get_ref().1.peer_certificates().unwrap()[0],
            &renewed.der
        );
    }

    #[tokio::test]
    async fn tcp_and_https_listeners_added_by_a_reload_serve() {
        let web = Backend::start("web").await;
        let echo = TcpBackend::echo().await;
        let pki = Pki::new();
        let cert = pki.leaf("site", &["site.test"]);
        let pools = format!(
            "{}{}",
            pool("web", &[web.addr], ""),
            pool("echo", &[echo.addr], "proxy_protocol = \"v1\"")
        );
        let geolb = Geolb::start(&config(&format!(
            "{pools}\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n"
        )))
        .await;
        // Other loopback addresses: a listener is known by its bind address.
        geolb.write_config(&config(&format!(
                "{pools}\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n\
                 [[listener]]\nname = \"db\"\nbind = \"127.0.0.2:0\"\nprotocol = \"tcp\"\npool = \"echo\"\n\n\
                 [[listener]]\nname = \"tls\"\nbind = \"127.0.0.3:0\"\nprotocol = \"https\"\npool = \"web\"\n{}\n",
                tls_list(&[&cert])
            )),
        )
        .unwrap();
        let (code, _, body) =
            super::support::request(geolb.admin, "POST", "/reload", &[], bytes::Bytes::new())
                .await
                .unwrap();
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let status = geolb.status().await;
        let addr_of = |name: &str| -> std::net::SocketAddr {
            status["listeners"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["name"] == name)
                .unwrap_or_else(|| panic!("no listener {name}: {status}"))["local_addr"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        };

        let db = addr_of("db");
        let stream = TcpStream::connect(db).await.unwrap();
        let client = stream.local_addr().unwrap();
        let got = bounded(LIMIT, "tcp after reload", exchange(stream, b"hi".to_vec())).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            format!(
                "PROXY TCP4 {} {} {} {}\r\nhi",
                client.ip(),
                db.ip(),
                client.port(),
                db.port()
            )
        );

        let tls = tls_connect(&pki.client(&[b"http/1.1"]), addr_of("tls"), "site.test")
            .await
            .unwrap();
        assert_eq!(&tls.get_ref().1.peer_certificates().unwrap()[0], &cert.der);
    }

    #[test]
    fn check_refuses_a_mismatched_key_naming_its_file() {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.test"]);
        let b = pki.leaf("b", &["b.test"]);
        let config = |cert: &str, key: &str| {
            format!(
                "[[pool]]\nname = \"web\"\nbackends = [{{ addr = \"127.0.0.1:9\" }}]\n\n\
                 [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\npool = \"web\"\n\
                 tls = [{{ cert = {cert:?}, key = {key:?} }}]\n"
            )
        };
        let (ok, stdout, stderr) = geolb_check(&config(&path_str(&a.cert), &path_str(&b.key)));
        assert!(!ok, "{stdout}{stderr}");
        assert!(stderr.contains("listener[0].tls[0].key"), "{stderr}");
        assert!(stderr.contains(&path_str(&b.key)), "{stderr}");
        assert!(stderr.contains("does not match"), "{stderr}");

        // A missing file is reported once, by the file check.
        let missing = pki.dir.path().join("missing.key");
        let (ok, _, stderr) = geolb_check(&config(&path_str(&a.cert), &path_str(&missing)));
        assert!(!ok);
        assert_eq!(
            stderr.matches("listener[0].tls[0].key").count(),
            1,
            "{stderr}"
        );

        let (ok, stdout, stderr) = geolb_check(&config(&path_str(&a.cert), &path_str(&a.key)));
        assert!(ok, "{stdout}{stderr}");
    }
}
