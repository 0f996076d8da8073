//! `compress` through the real binary: what is compressed and how, what is
//! left alone, streams that keep flowing, memory that stays bounded, and a
//! reload seen by the next request of an open connection.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_compression::tokio::write::{BrotliDecoder, GzipDecoder, ZstdDecoder};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Geolb, bounded, get, metric_value, request};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

const LIMIT: Duration = Duration::from_secs(10);

/// Text that compresses like a page does (words from a small vocabulary in
/// a varying order), `n` bytes of it.
fn text(n: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "load",
        "balancer",
        "sends",
        "each",
        "request",
        "to",
        "a",
        "backend",
        "near",
        "client",
        "and",
        "streams",
        "answer",
        "back",
        "<div>",
        "</div>",
        "class=\"row\"",
    ];
    let mut out = Vec::with_capacity(n + 16);
    let mut x: u32 = 12345;
    while out.len() < n {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        out.extend_from_slice(WORDS[(x >> 16) as usize % WORDS.len()].as_bytes());
        out.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
    }
    out.truncate(n);
    out
}

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into()).boxed()
}

/// A body sent as the test feeds `tx`, without a length.
fn channel() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(2);
    let stream = futures_stream(move |cx| rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))));
    (tx, StreamBody::new(stream).boxed())
}

fn futures_stream<F>(f: F) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>>
where
    F: FnMut(
            &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>>
        + Send
        + Sync
        + Unpin
        + 'static,
{
    struct S<F>(F);
    impl<F> futures_core::Stream for S<F>
    where
        F: FnMut(
                &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>>
            + Unpin,
    {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            (self.0)(cx)
        }
    }
    S(f)
}

/// The backend: answers by the last segment of the path, so that routes
/// with prefixes reach the same answers.
async fn backend(release: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let release = release.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let release = release.clone();
                    async move { Ok::<_, Infallible>(answer(req, release)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn query_n(req: &Request<Incoming>) -> usize {
    req.uri()
        .query()
        .and_then(|q| q.strip_prefix("n="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

fn answer(req: Request<Incoming>, release: Arc<Notify>) -> Response<Body> {
    let last = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    let n = query_n(&req);
    let page = |ct: &'static str, n: usize| {
        Response::builder()
            .header("content-type", ct)
            .header("content-length", n)
            .body(full(text(n)))
            .unwrap()
    };
    match last.as_str() {
        "html" => {
            let mut r = page("text/html; charset=utf-8", n);
            let h = r.headers_mut();
            h.insert("etag", "\"v1\"".parse().unwrap());
            h.insert("vary", "Cookie".parse().unwrap());
            h.insert("accept-ranges", "bytes".parse().unwrap());
            r
        }
        "json" => page("application/json", n),
        "png" => page("image/png", n),
        "small" => page("text/html", 100),
        "no-transform" => {
            let mut r = page("text/html", n);
            let cc = "public, no-transform".parse().unwrap();
            r.headers_mut().insert("cache-control", cc);
            r
        }
        "encoded" => {
            let mut r = page("text/html", n);
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
            r
        }
        "partial" => {
            let mut r = page("text/html", n);
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let range = format!("bytes 0-{}/{}", n - 1, n * 2).parse().unwrap();
            r.headers_mut().insert("content-range", range);
            r
        }
        // An event stream: one event, then the rest once the test says.
        "events" => {
            let (tx, body) = channel();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
                release.notified().await;
                let _ = tx.send(Bytes::from_static(b"data: second\n\n")).await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
        // `n` bytes of text in 64 KiB pieces, without a length.
        "big" => {
            let (tx, body) = channel();
            tokio::spawn(async move {
                let all = Bytes::from(text(n));
                for at in (0..n).step_by(64 * 1024) {
                    let piece = all.slice(at..(at + 64 * 1024).min(n));
                    if tx.send(piece).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder()
                .header("content-type", "text/plain")
                .body(body)
                .unwrap()
        }
        _ => Response::new(full("ok\n")),
    }
}

fn config(backend: SocketAddr, compress: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{backend}\" }}]\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n{compress}\n\
         routes = [\n\
           {{ path_prefix = \"/gz/\", pool = \"p\", compress = {{ algorithms = [\"gzip\"], level = {{ gzip = 6 }} }} }},\n\
           {{ path_prefix = \"/raw/\", pool = \"p\", compress = false }},\n\
         ]\n"
    )
}

async fn start(compress: &str) -> (Geolb, SocketAddr, Arc<Notify>) {
    let release = Arc::new(Notify::new());
    let backend = backend(release.clone()).await;
    let geolb = Geolb::start(&config(backend, compress)).await;
    let web = geolb.listener("web");
    (geolb, web, release)
}

/// Decodes `data`, compressed with `encoding`, into `out` as it comes.
struct Decoder(
    Box<dyn AsyncWrite + Unpin + Send>,
    Arc<std::sync::Mutex<Vec<u8>>>,
);

/// A sink the decoder writes into, readable while it decodes.
struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

impl AsyncWrite for Shared {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl Decoder {
    fn new(encoding: &str) -> Decoder {
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Shared(out.clone());
        let inner: Box<dyn AsyncWrite + Unpin + Send> = match encoding {
            "gzip" => Box::new(GzipDecoder::new(sink)),
            "br" => Box::new(BrotliDecoder::new(sink)),
            "zstd" => Box::new(ZstdDecoder::new(sink)),
            other => panic!("unexpected Content-Encoding {other:?}"),
        };
        Decoder(inner, out)
    }

    /// Feeds `data`; what is decoded so far.
    async fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        self.0.write_all(data).await.unwrap();
        self.0.flush().await.unwrap();
        self.1.lock().unwrap().clone()
    }

    async fn end(mut self) -> Vec<u8> {
        self.0
            .shutdown()
            .await
            .expect("a complete compressed stream");
        self.1.lock().unwrap().clone()
    }
}

async fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut d = Decoder::new(encoding);
    d.feed(data).await;
    d.end().await
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

fn vary(h: &HeaderMap) -> Vec<String> {
    h.get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

async fn fetch(addr: SocketAddr, path: &str, accept: &str) -> (u16, HeaderMap, Bytes) {
    let headers: &[(&str, &str)] = if accept.is_empty() {
        &[]
    } else {
        &[("accept-encoding", accept)]
    };
    bounded(LIMIT, path, get(addr, path, headers))
        .await
        .unwrap()
}

#[tokio::test]
async fn each_algorithm_decodes_to_the_original_with_the_headers_a_cache_needs() {
    let (_geolb, web, _) = start("compress = true").await;
    let original = text(50_000);
    for encoding in ["gzip", "br", "zstd"] {
        let (code, h, body) = fetch(web, "/html?n=50000", encoding).await;
        assert_eq!(code, 200);
        assert_eq!(header(&h, "content-encoding"), Some(encoding));
        assert_eq!(header(&h, "content-length"), None, "{encoding}");
        assert_eq!(header(&h, "transfer-encoding"), Some("chunked"));
        assert_eq!(header(&h, "accept-ranges"), None);
        // The backend's Vary stays; ours is appended; the ETag is weak.
        assert_eq!(vary(&h), ["Cookie", "Accept-Encoding"]);
        assert_eq!(header(&h, "etag"), Some("W/\"v1\""));
        assert!(
            body.len() < original.len() / 3,
            "{encoding}: {}",
            body.len()
        );
        assert_eq!(decode(encoding, &body).await, original, "{encoding}");
    }
    let (_, h, body) = fetch(web, "/json?n=30000", "gzip").await;
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &body).await, text(30_000));
}

#[tokio::test]
async fn the_client_q_values_choose_and_the_server_order_breaks_ties() {
    let (_geolb, web, _) = start("compress = true").await;
    for (accept, chosen) in [
        ("gzip, deflate, br, zstd", Some("zstd")),
        ("gzip, br", Some("br")),
        ("gzip;q=1.0, br;q=0.5, zstd;q=0.2", Some("gzip")),
        ("zstd;q=0, *", Some("br")),
        ("*;q=0, gzip;q=0.1", Some("gzip")),
        ("deflate, identity", None),
        ("gzip;q=0, br;q=0, zstd;q=0", None),
        ("", None),
    ] {
        let (code, h, body) = fetch(web, "/html?n=5000", accept).await;
        assert_eq!(code, 200);
        assert_eq!(header(&h, "content-encoding"), chosen, "{accept:?}");
        // Vary whether or not this client got it: a cache must not hand
        // a compressed copy to the next client, nor an identity one.
        assert_eq!(vary(&h), ["Cookie", "Accept-Encoding"], "{accept:?}");
        if chosen.is_none() {
            assert_eq!(header(&h, "content-length"), Some("5000"));
            assert_eq!(header(&h, "etag"), Some("\"v1\""));
            assert_eq!(body, text(5000));
        }
    }
    // A route's compress wins: gzip only here, and off there.
    let (_, h, body) = fetch(web, "/gz/html?n=5000", "zstd, br, gzip").await;
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &body).await, text(5000));
    let (_, h, body) = fetch(web, "/raw/html?n=5000", "gzip").await;
    assert_eq!(header(&h, "content-encoding"), None);
    assert_eq!(vary(&h), ["Cookie"]);
    assert_eq!(body, text(5000));
}

#[tokio::test]
async fn what_must_not_be_compressed_passes_unchanged() {
    let (_geolb, web, _) = start("compress = true").await;
    for (path, encoding, why) in [
        ("/no-transform?n=5000", None, "Cache-Control: no-transform"),
        (
            "/encoded?n=5000",
            Some("gzip"),
            "encoded by the backend already",
        ),
        ("/small", None, "under min_size"),
        ("/png?n=5000", None, "a type not listed"),
        ("/partial?n=5000", None, "206 with Content-Range"),
    ] {
        let (_, h, body) = fetch(web, path, "gzip, br, zstd").await;
        assert_eq!(header(&h, "content-encoding"), encoding, "{why}");
        assert_eq!(
            body.len(),
            if path == "/small" { 100 } else { 5000 },
            "{why}"
        );
        assert_eq!(body, text(body.len()), "{why}");
        assert!(header(&h, "content-length").is_some(), "{why}");
    }
    let (_, h, _) = fetch(web, "/png?n=5000", "gzip").await;
    assert!(vary(&h).is_empty(), "not a compressed type: no Vary");
    // HEAD: the headers of an identity answer, Vary included.
    let head = request(
        web,
        "HEAD",
        "/html?n=5000",
        &[("accept-encoding", "gzip")],
        Bytes::new(),
    );
    let (code, h, body) = bounded(LIMIT, "HEAD", head).await.unwrap();
    assert_eq!((code, body.len()), (200, 0));
    assert_eq!(header(&h, "content-encoding"), None);
    assert_eq!(header(&h, "content-length"), Some("5000"));
    assert_eq!(vary(&h), ["Cookie", "Accept-Encoding"]);
}

/// Reads `resp`'s body until its decoded text holds the first event, with
/// the backend still holding the second back; then lets it go and checks
/// the whole.
async fn first_event_arrives_before_the_end(resp: Response<Incoming>, release: &Notify) {
    let encoding = header(resp.headers(), "content-encoding")
        .expect("compressed")
        .to_owned();
    let mut decoder = Decoder::new(&encoding);
    let mut body = resp.into_body();
    let mut decoded = Vec::new();
    while !decoded.starts_with(b"data: first\n\n") {
        let frame = bounded(LIMIT, "the first event", body.frame())
            .await
            .expect("the body ended before its first event")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            decoded = decoder.feed(&data).await;
        }
    }
    assert_eq!(decoded, b"data: first\n\n");
    release.notify_one();
    while let Some(frame) = bounded(LIMIT, "the rest", body.frame()).await {
        if let Ok(data) = frame.unwrap().into_data() {
            decoder.feed(&data).await;
        }
    }
    assert_eq!(decoder.end().await, b"data: first\n\ndata: second\n\n");
}

#[tokio::test]
async fn a_stream_flows_before_the_backend_ends_over_http1_and_http2() {
    let (_geolb, web, release) = start("compress = true").await;
    let request = || {
        Request::get("/events")
            .header("host", "t.example")
            .header("accept-encoding", "gzip")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let stream = TcpStream::connect(web).await.unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = bounded(LIMIT, "h1 head", h1.send_request(request()))
        .await
        .unwrap();
    first_event_arrives_before_the_end(resp, &release).await;

    let stream = TcpStream::connect(web).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = bounded(LIMIT, "h2 head", h2.send_request(request()))
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    first_event_arrives_before_the_end(resp, &release).await;
}

/// The peak resident memory of process `pid`, in bytes.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_large_body_streams_without_the_daemon_holding_it() {
    let (geolb, web, _) = start("compress = true").await;
    // Warm up: the connections and the encoder's first allocations.
    let (_, _, warm) = fetch(web, "/big?n=300000", "gzip").await;
    let before = vm_hwm(geolb.pid());
    const SIZE: usize = 8 << 20;
    let (code, h, body) = fetch(web, &format!("/big?n={SIZE}"), "gzip").await;
    assert_eq!(code, 200);
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    let grown = vm_hwm(geolb.pid()).saturating_sub(before);
    // Held whole, the body alone would be 8 MiB. The heap is on huge
    // pages (`[runtime] huge_pages`), resident 2 MiB at a time: streaming
    // grows it by 0.2 to 0.8 MB, and by one 2 MiB page more when the
    // stream's blocks first reach a new one (2,314,240 bytes in a run of
    // `.ci/run`, over the quarter this test once allowed).
    assert!(
        grown < (SIZE / 2) as u64,
        "peak memory grew by {grown} bytes for an {SIZE}-byte body"
    );
    let decoded = decode("gzip", &body).await;
    assert_eq!(decoded.len(), SIZE);
    assert!(decoded == text(SIZE));
    // Bytes to the client are the compressed ones; the backend's series
    // counts what it sent.
    let metrics = geolb.metrics().await;
    let to_client = "geolb_http_bytes_total{listener=\"web\",pool=\"p\",direction=\"out\"}";
    assert_eq!(
        metric_value(&metrics, to_client),
        Some((warm.len() + body.len()) as f64)
    );
    let from_backend = metrics
        .lines()
        .find(|l| l.starts_with("geolb_backend_bytes_total{") && l.contains("direction=\"out\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(from_backend, Some((300_000 + SIZE) as f64));
}

#[tokio::test]
async fn a_reload_turns_compression_off_for_the_next_request_of_an_open_connection() {
    let release = Arc::new(Notify::new());
    let backend_addr = backend(release).await;
    let geolb = Geolb::start(&config(backend_addr, "compress = true")).await;
    let web = geolb.listener("web");
    let stream = TcpStream::connect(web).await.unwrap();
    let (mut conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(driver);
    let mut ask = async move || {
        conn.ready().await.unwrap();
        let req = Request::get("/html?n=5000")
            .header("host", "t.example")
            .header("accept-encoding", "gzip")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = bounded(LIMIT, "request", conn.send_request(req))
            .await
            .unwrap();
        let encoding = header(resp.headers(), "content-encoding").map(str::to_owned);
        resp.into_body().collect().await.unwrap();
        encoding
    };
    assert_eq!(ask().await.as_deref(), Some("gzip"));
    geolb
        .write_config(&config(backend_addr, "compress = false"))
        .unwrap();
    let reload = request(geolb.admin, "POST", "/reload", &[], Bytes::new());
    let (code, _, body) = bounded(LIMIT, "reload", reload).await.unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ask().await, None, "the same connection, after the reload");
}
