//! geolb's own HTTP/1.1 client against hyper's, differentially: the same
//! requests go through a pool with `http1_client = "hyper"` and one with
//! the default (geolb's own) to one scripted raw-TCP backend, which
//! records the exact bytes it receives; what the backend got and what
//! the client got are compared byte for byte. Where the two clients
//! differ on purpose (a response framed both ways, a head over the
//! server side's limit), each side's behaviour is asserted instead.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::library::{Lb, ListenerSpec, pattern};
use support::{bounded, eventually};

const LIMIT: Duration = Duration::from_secs(10);

/// What the backend does for a request path.
struct Script {
    /// Written once the head is read, before the body is (a 100 Continue).
    early: &'static [u8],
    response: Vec<u8>,
    /// Closed after the response (close-delimited or cut short).
    close: bool,
    /// Written in one write, not in pieces.
    whole: bool,
    /// Closed with a shutdown: over TLS, `close_notify` first (a clean
    /// end, not a cut).
    shut: bool,
}

fn script(path: &str) -> Script {
    let plain = |response: &[u8]| Script {
        early: b"",
        response: response.to_vec(),
        close: false,
        whole: false,
        shut: false,
    };
    let closing = |response: &[u8]| Script {
        early: b"",
        response: response.to_vec(),
        close: true,
        whole: false,
        shut: false,
    };
    match path {
        "/length" => plain(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-One: 1\r\nX-One: 2\r\n\r\nhello"),
        "/chunked" => plain(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n",
        ),
        "/close" => closing(b"HTTP/1.1 200 OK\r\nX-Kind: close\r\n\r\nuntil the end"),
        "/close-notified" => Script {
            shut: true,
            ..closing(b"HTTP/1.1 200 OK\r\nX-Kind: close\r\n\r\nuntil the end")
        },
        "/http10" => closing(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold style"),
        // An HTTP/1.0 backend offering to keep its connection.
        "/http10-kept" => plain(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"),
        "/reason" => plain(b"HTTP/1.1 299 Fine Thanks\r\nContent-Length: 2\r\n\r\nok"),
        "/no-content" => plain(b"HTTP/1.1 204 No Content\r\nX-Empty: yes\r\n\r\n"),
        "/not-modified" => plain(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"),
        "/continue" => Script {
            early: b"HTTP/1.1 100 Continue\r\n\r\n",
            response: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            close: false,
            whole: false,
            shut: false,
        },
        "/informational" => plain(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes",
        ),
        "/large" => {
            let body = pattern(7, 1 << 20);
            let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            r.extend_from_slice(&body);
            plain(&r)
        }
        // More than loopback's socket buffers take: a client that stops
        // reading leaves geolb with some of it unsent.
        "/huge" => {
            let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 32 << 20).into_bytes();
            r.resize(r.len() + (32 << 20), b'h');
            plain(&r)
        }
        "/large-chunked" => {
            let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for piece in pattern(9, 600_000).chunks(70_000) {
                r.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                r.extend_from_slice(piece);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            plain(&r)
        }
        // Longer than the reads of a body of unknown length grow to.
        "/large-close" => {
            let mut r = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
            r.extend_from_slice(&pattern(11, 300_000));
            closing(&r)
        }
        // Keep-alive by its head, closed by the backend right after (its
        // keep-alive timeout, at once).
        "/then-close" => closing(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        // A second answer nobody asked for right behind the first, on a
        // connection kept open: whoever takes the connection next must not
        // get it as its own.
        "/then-stray" => {
            let body = pattern(5, 100_000);
            let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            r.extend_from_slice(&body);
            r.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray");
            Script {
                early: b"",
                response: r,
                close: false,
                whole: true,
                shut: false,
            }
        }
        "/cut" => closing(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"),
        "/both" => plain(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        "/two-lengths" => plain(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        "/bad-chunk-later" => closing(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n0\r\n\r\n",
        ),
        "/bad-chunk" => closing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        "/obs-fold" => plain(b"HTTP/1.1 200 OK\r\nX-Folded: one\r\n two\r\nContent-Length: 2\r\n\r\nok"),
        "/big-head" => {
            let mut r = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
            r.extend(std::iter::repeat_n(b'a', 70 * 1024));
            r.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
            plain(&r)
        }
        // Fields geolb's client copies out as read, never put in a map:
        // names in any case, spacing, a value that is not ASCII, an empty
        // one, the backend's own request id, hop-by-hop fields to strip.
        "/fields" => plain(
            b"HTTP/1.1 200 OK\r\nServer: Scripted\r\nX-Request-Id: the-backends\r\n\
              Content-Type:text/plain\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\n\
              Proxy-Connection: keep-alive\r\nX-Pad: \t spaced \t\r\nX-Obs: caf\xe9\r\n\
              Upgrade: h2c\r\nTE: trailers\r\nContent-Length: 2\r\nCONTENT-language: en\r\n\
              X-Empty:\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\nok",
        ),
        // Heads a copy would send otherwise than a map: they get one.
        "/interleaved" => plain(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-A: 1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok",
        ),
        "/hop-named" => plain(
            b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: secret\r\nX-Keep: yes\r\nContent-Length: 2\r\n\r\nok",
        ),
        "/te-stripped" => plain(b"HTTP/1.1 200 OK\r\nTE: gzip\r\nX-After: 1\r\nUpgrade: x\r\nHTTP2-Settings: AA\r\nX-Last: 1\r\nContent-Length: 2\r\n\r\nok"),
        "/trailer-length" => plain(b"HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nContent-Length: 2\r\n\r\nok"),
        "/lf-only" => plain(b"HTTP/1.1 200 OK\nX-Lf: yes\nContent-Length: 2\n\nok"),
        "/many-fields" => {
            let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..40 {
                r.extend_from_slice(format!("X-Field-{i}: {i}\r\n").as_bytes());
            }
            r.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
            plain(&r)
        }
        "/twelve-fields" => {
            let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
            for i in 0..12 {
                r.extend_from_slice(format!("X-Field-{i}: {i}\r\n").as_bytes());
            }
            r.extend_from_slice(b"\r\nok");
            plain(&r)
        }
        "/upgrade" => plain(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"),
        // Chunks of every kind, to be written a few bytes at a time: a
        // size line, a chunk's data and its CRLF each cut across reads.
        "/trickle" | "/trickle-trailers" => {
            let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
                5\r\nfirst\r\n00c\r\nsecond chunk\r\n3;ext=1\r\nend\r\n12c\r\n"
                .to_vec();
            r.extend_from_slice(&pattern(3, 300));
            r.extend_from_slice(b"\r\n0\r\n");
            if path == "/trickle-trailers" {
                r.extend_from_slice(b"X-Sum: 42\r\n");
            }
            r.extend_from_slice(b"\r\n");
            plain(&r)
        }
        p if p.starts_with("/gen/") => {
            let seed = p["/gen/".len()..].parse().unwrap_or(0);
            let answer = generated_answer(&mut fastrand::Rng::with_seed(seed));
            Script {
                early: b"",
                response: answer.bytes,
                close: answer.close,
                whole: false,
                shut: true,
            }
        }
        _ => plain(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    }
}

/// Every request the backend read, as (connection number, exact bytes).
type Seen = Arc<Mutex<Vec<(usize, Vec<u8>)>>>;

/// The connections the backend saw end, by number.
type Closed = Arc<Mutex<Vec<usize>>>;

/// A raw backend answering each request by [`script`], recording each;
/// over TLS with `tls`.
async fn scripted_backend_over(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, Seen, Closed) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, closed): (Seen, Closed) = Default::default();
    let (record, ended) = (seen.clone(), closed.clone());
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((s, _)) = listener.accept().await {
            n += 1;
            let (record, ended, tls) = (record.clone(), ended.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => serve(s, n, record).await,
                    Some(tls) => {
                        if let Ok(s) = tls.accept(s).await {
                            serve(s, n, record).await;
                        }
                    }
                }
                ended.lock().unwrap().push(n);
            });
        }
    });
    (addr, seen, closed)
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, conn: usize, seen: Seen) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) =
            read_until(&mut s, &mut buf, |b| find(b, b"\r\n\r\n").map(|i| i + 4)).await
        else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let script = script(&path);
        if !script.early.is_empty() && s.write_all(script.early).await.is_err() {
            return;
        }
        let end = if head.contains("transfer-encoding: chunked") {
            match read_until(&mut s, &mut buf, |b| {
                chunked_end(&b[head_end..]).map(|e| head_end + e)
            })
            .await
            {
                Some(end) => end,
                None => return,
            }
        } else {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            match read_until(&mut s, &mut buf, |b| {
                (b.len() >= head_end + length).then_some(head_end + length)
            })
            .await
            {
                Some(end) => end,
                None => return,
            }
        };
        seen.lock()
            .unwrap()
            .push((conn, buf.drain(..end).collect()));
        // In pieces, so that bodies stream rather than arrive whole; a
        // few bytes at a time for `/trickle*`, each piece its own read.
        let trickle = path.starts_with("/trickle");
        let piece = match (trickle, script.whole) {
            (true, _) => 3,
            (false, true) => usize::MAX,
            (false, false) => 100_000,
        };
        for piece in script.response.chunks(piece) {
            if s.write_all(piece).await.is_err() {
                return;
            }
            if trickle {
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        if s.flush().await.is_err() {
            return;
        }
        if script.close {
            if script.shut {
                let _ = s.shutdown().await;
            }
            return;
        }
    }
}

/// Reads into `buf` until `done` finds an end in it; `None` at EOF first.
async fn read_until<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    loop {
        if let Some(end) = done(buf) {
            return Some(end);
        }
        let mut chunk = [0u8; 16384];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where a chunked body at the start of `b` ends, if it is all there.
fn chunked_end(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line = find(&b[at..], b"\r\n")?;
        let size_text = std::str::from_utf8(&b[at..at + line]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at += line + 2;
        if size == 0 {
            return find(&b[at..], b"\r\n").and_then(|_| {
                // Trailer fields, then the empty line.
                let mut t = at;
                loop {
                    let l = find(&b[t..], b"\r\n")?;
                    t += l + 2;
                    if l == 0 {
                        return Some(t);
                    }
                }
            });
        }
        if b.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

/// One backend, two pools on it (hyper's client and geolb's), a listener
/// on each.
async fn two_clients() -> (Lb, Seen, Closed) {
    two_clients_over(None).await
}

/// [`two_clients`], the backend over TLS with `tls` (the pools then
/// speak TLS to it, unverified: the test is of HTTP, not certificates).
async fn two_clients_over(tls: Option<tokio_rustls::TlsAcceptor>) -> (Lb, Seen, Closed) {
    let key = if tls.is_some() {
        "tls = { verify = false }\n"
    } else {
        ""
    };
    let (backend, seen, closed) = scripted_backend_over(tls).await;
    let pools = format!(
        "[[pool]]\nname = \"viahyper\"\nhttp1_client = \"hyper\"\n{key}backends = [{{ addr = \"{backend}\" }}]\n\
         [[pool]]\nname = \"viageolb\"\n{key}backends = [{{ addr = \"{backend}\" }}]\n"
    );
    let listener = |name, pool| ListenerSpec {
        name,
        protocol: "http",
        pool,
        extra: "retries = 0".to_owned(),
    };
    let lb = Lb::start(
        &pools,
        &[listener("hyper", "viahyper"), listener("geolb", "viageolb")],
    )
    .await;
    (lb, seen, closed)
}

/// Sends `request` and reads until geolb closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    bounded(LIMIT, "a response", async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    })
    .await
}

/// A response as compared: the `Date` line dropped (the two answers are
/// made at different instants) and a chunked body decoded, its chunk
/// sizes being those of the reads that brought it (timing, not either
/// client).
fn normalize(resp: &[u8]) -> String {
    let Some(head_end) = find(resp, b"\r\n\r\n") else {
        return String::from_utf8_lossy(resp).into_owned();
    };
    let head = String::from_utf8_lossy(&resp[..head_end]);
    let lines: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect();
    let body = &resp[head_end + 4..];
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    format!("{}\r\n\r\n{body}", lines.join("\r\n"))
}

/// The data of a chunked body, then `[end]` and its trailers if it ended.
fn dechunk(mut b: &[u8]) -> String {
    let mut out = Vec::new();
    loop {
        let Some(line) = find(b, b"\r\n") else {
            out.extend_from_slice(b"[cut]");
            break;
        };
        let size = std::str::from_utf8(&b[..line])
            .ok()
            .and_then(|t| usize::from_str_radix(t.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else {
            out.extend_from_slice(b"[bad]");
            break;
        };
        b = &b[line + 2..];
        if size == 0 {
            out.extend_from_slice(b"[end]");
            out.extend_from_slice(b);
            break;
        }
        if b.len() < size + 2 {
            out.extend_from_slice(b);
            out.extend_from_slice(b"[cut]");
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the backend received last.
fn last_request(seen: &Seen) -> Vec<u8> {
    let got = seen.lock().unwrap().last().map(|(_, b)| b.clone());
    mask_request_id(got.unwrap_or_default())
}

/// `X-Request-Id`'s value masked: geolb makes a new random one for each
/// request, which the backend receives and the client gets back.
fn mask_request_id(mut b: Vec<u8>) -> Vec<u8> {
    let name = b"x-request-id: ";
    if let Some(at) = find(&b, name) {
        let from = at + name.len();
        let to = from + find(&b[from..], b"\r\n").unwrap_or(0);
        b.splice(from..to, *b"<random>");
    }
    b
}

/// Sends `request` through both clients: the client's answers, and the
/// bytes the backend received for each (empty if none).
async fn both(lb: &Lb, seen: &Seen, request: &[u8]) -> [(String, Vec<u8>); 2] {
    both_raw(lb, seen, request)
        .await
        .map(|(resp, got)| (normalize(&resp), got))
}

/// [`both`], the answers with only their request ids masked.
async fn both_raw(lb: &Lb, seen: &Seen, request: &[u8]) -> [(Vec<u8>, Vec<u8>); 2] {
    let mut out = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for (i, name) in ["hyper", "geolb"].into_iter().enumerate() {
        let before = seen.lock().unwrap().len();
        let resp = exchange(lb.addr(name), request).await;
        let got = if seen.lock().unwrap().len() > before {
            last_request(seen)
        } else {
            Vec::new()
        };
        out[i] = (mask_request_id(resp), got);
    }
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The same bytes reach the backend and the client through either client.
async fn same(lb: &Lb, seen: &Seen, request: &[u8]) -> String {
    let [(hyper_resp, hyper_req), (own_resp, own_req)] = both(lb, seen, request).await;
    assert_eq!(
        text(&own_req),
        text(&hyper_req),
        "what the backend received for {}",
        text(request)
    );
    assert_eq!(
        own_resp,
        hyper_resp,
        "what the client received for {}",
        text(request)
    );
    own_resp
}

/// The scripted backend's TLS: a certificate of its own, which the
/// pools do not verify.
fn backend_tls() -> tokio_rustls::TlsAcceptor {
    let pki = support::library::Pki::new();
    let leaf = pki.leaf("backend", &["127.0.0.1"]);
    pki.acceptor(&leaf)
}

/// The scripted backend's two ways, each with its name: cleartext, and
/// TLS ([`backend_tls`]).
fn cleartext_and_tls() -> [(Option<tokio_rustls::TlsAcceptor>, &'static str); 2] {
    [(None, "tcp"), (Some(backend_tls()), "tls")]
}

/// The backend connection of the last request the backend saw.
fn last_conn(seen: &Seen) -> usize {
    seen.lock().unwrap().last().map(|(c, _)| *c).unwrap()
}

/// A GET of `path` with the `extra` fields, asking to close after it.
fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: a.example\r\n{extra}Connection: close\r\n\r\n")
        .into_bytes()
}

/// The status of the final response (after any 1xx).
fn status(resp: &str) -> u16 {
    let last = resp.rfind("HTTP/1.").unwrap_or(0);
    resp[last..]
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn responses_reach_the_client_byte_for_byte_as_through_hyper() {
    let (lb, seen, _) = two_clients().await;
    for path in [
        "/length",
        "/close",
        "/http10",
        "/reason",
        "/no-content",
        "/not-modified",
        "/informational",
        "/cut",
    ] {
        let resp = same(&lb, &seen, &get(path, "")).await;
        assert!(status(&resp) >= 200, "{path}: {resp}");
    }
    // Trailers reach a client that asks for them.
    let resp = same(&lb, &seen, &get("/chunked", "TE: trailers\r\n")).await;
    assert!(
        resp.ends_with("hello world[end]x-sum: 42\r\n\r\n"),
        "{resp}"
    );
    let resp = same(&lb, &seen, &get("/chunked", "")).await;
    assert!(resp.contains("hello world[end]"), "{resp}");
    // A HEAD keeps the length a GET would get, without the body.
    let head = b"HEAD /length HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    let resp = same(&lb, &seen, head).await;
    assert!(
        resp.contains("content-length: 5") && resp.ends_with("\r\n\r\n"),
        "{resp}"
    );
    // Cut short by the backend: the same partial answer.
    let resp = same(&lb, &seen, &get("/cut", "")).await;
    assert!(resp.ends_with("only part"), "{resp}");
}

/// geolb's client keeps a plain answer's fields as it read them, for its
/// server to copy out (no header map); heads a copy would send otherwise
/// than a map get one. Either way the client gets what hyper's client
/// gives, fields and order alike.
#[tokio::test]
async fn fields_copied_as_read_reach_the_client_as_through_hyper() {
    let (lb, seen, _) = two_clients().await;
    let request = |method: &str, path: &str, version: &str, extra: &str| {
        format!("{method} {path} HTTP/{version}\r\nHost: a.example\r\n{extra}\r\n").into_bytes()
    };
    let resp = same(
        &lb,
        &seen,
        &request("GET", "/fields", "1.1", "Connection: close\r\n"),
    )
    .await;
    for line in [
        "server: Scripted\r\n",
        "x-request-id: <random>\r\n",
        "content-type: text/plain\r\n",
        "x-pad: spaced\r\n",
        "content-length: 2\r\n",
        "content-language: en\r\n",
        "x-empty: \r\n",
        "set-cookie: a=1\r\nset-cookie: b=2\r\n",
        "te: trailers\r\n",
    ] {
        assert!(resp.contains(line), "{line:?} in {resp}");
    }
    for gone in ["the-backends", "keep-alive", "upgrade:", "proxy-connection"] {
        assert!(
            !resp.to_ascii_lowercase().contains(gone),
            "{gone} in {resp}"
        );
    }
    assert!(resp.ends_with("\r\n\r\nok"), "{resp}");
    // A HEAD, and an HTTP/1.0 client.
    same(
        &lb,
        &seen,
        &request("HEAD", "/fields", "1.1", "Connection: close\r\n"),
    )
    .await;
    same(&lb, &seen, &request("GET", "/fields", "1.0", "")).await;
    let resp = same(
        &lb,
        &seen,
        &request("GET", "/interleaved", "1.1", "Connection: close\r\n"),
    )
    .await;
    assert!(
        resp.contains("set-cookie: a=1\r\nset-cookie: b=2\r\nx-a: 1\r\n"),
        "{resp}"
    );
    let resp = same(
        &lb,
        &seen,
        &request("GET", "/hop-named", "1.1", "Connection: close\r\n"),
    )
    .await;
    assert!(
        resp.contains("x-keep: yes") && !resp.contains("secret"),
        "{resp}"
    );
    for path in [
        "/trailer-length",
        "/lf-only",
        "/many-fields",
        "/twelve-fields",
    ] {
        let resp = same(
            &lb,
            &seen,
            &request("GET", path, "1.1", "Connection: close\r\n"),
        )
        .await;
        assert_eq!(status(&resp), 200, "{path}: {resp}");
    }
}

#[tokio::test]
async fn large_bodies_stream_whole_in_every_framing() {
    let (lb, seen, _) = two_clients().await;
    for path in ["/large", "/large-chunked", "/large-close"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
        let [(hyper_resp, _), (own_resp, _)] = both(&lb, &seen, req.as_bytes()).await;
        let differ = own_resp
            .bytes()
            .zip(hyper_resp.bytes())
            .position(|(a, b)| a != b);
        assert!(
            own_resp == hyper_resp,
            "{path}: the answers differ at {differ:?} (lengths {} and {}): {:?}",
            own_resp.len(),
            hyper_resp.len(),
            &own_resp[..own_resp.len().min(300)]
        );
        let expected = match path {
            "/large" => pattern(7, 1 << 20),
            "/large-chunked" => pattern(9, 600_000),
            _ => pattern(11, 300_000),
        };
        assert!(
            own_resp.contains(&String::from_utf8_lossy(&expected).into_owned()),
            "{path}: the body is not whole"
        );
    }
}

#[tokio::test]
async fn request_bodies_reach_the_backend_byte_for_byte_as_through_hyper() {
    let (lb, seen, _) = two_clients().await;
    let requests: [&[u8]; 5] = [
        b"POST /length HTTP/1.1\r\nHost: a.example\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
        b"POST /length HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n",
        b"GET /length HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"PUT /length HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"POST /continue HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody",
    ];
    for req in requests {
        let resp = same(&lb, &seen, req).await;
        assert_eq!(status(&resp), 200, "{resp}");
    }
    // A request body over 1 MiB, in the client's own chunks.
    let big = pattern(3, 1_200_000);
    let mut req = format!(
        "POST /length HTTP/1.1\r\nHost: a.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    let [(hyper_resp, hyper_req), (own_resp, own_req)] = both(&lb, &seen, &req).await;
    assert!(
        own_req == hyper_req && own_req.ends_with(&big),
        "the backend got different bodies"
    );
    assert_eq!(own_resp, hyper_resp);
}

/// Fields geolb's server passes on unread (`Accept`, `Sec-Fetch-*`, ...)
/// go out alike from both clients, with a body and without: geolb's
/// client writes them after the map's fields, hyper's gets them appended
/// to its map.
#[tokio::test]
async fn fields_passed_unread_reach_the_backend_alike_from_both_clients() {
    let (lb, seen, _) = two_clients().await;
    let fields = "Accept: text/html\r\nsec-ch-ua: \"C\";v=\"1\"\r\nUser-Agent: t/1\r\n\
                  Sec-Fetch-Mode: navigate\r\nX-Other: o\r\nAccept: again\r\nDNT: 1\r\n\
                  Content-Type: application/json\r\nAuthorization: Bearer t\r\n";
    let requests = [
        format!("GET /length HTTP/1.1\r\nHost: a.example\r\n{fields}Connection: close\r\n\r\n"),
        format!(
            "POST /length HTTP/1.1\r\n{fields}Host: a.example\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        ),
        format!(
            "POST /length HTTP/1.1\r\nHost: a.example\r\n{fields}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
        ),
    ];
    for req in requests {
        let resp = same(&lb, &seen, req.as_bytes()).await;
        assert_eq!(status(&resp), 200, "{resp}");
        let got = text(&last_request(&seen));
        assert!(
            got.contains("accept: text/html\r\naccept: again\r\n")
                && got.contains("dnt: 1\r\n")
                && got.contains("content-type: application/json\r\nauthorization: Bearer t\r\n"),
            "{got}"
        );
    }
}

/// An HTTP/2 client's POST (h2c, prior knowledge) reaches the backend
/// alike from both clients. Without a `content-length` the body goes
/// chunked, the framing field that hyper's client appends after every
/// other, the ones geolb adds among them; with one, it stays where the
/// client put it.
#[tokio::test]
async fn an_http2_clients_body_reaches_the_backend_alike_from_both_clients() {
    let (lb, seen, _) = two_clients().await;
    for length in [None, Some(11)] {
        let mut got = Vec::new();
        for name in ["hyper", "geolb"] {
            let before = seen.lock().unwrap().len();
            let status = bounded(LIMIT, "an HTTP/2 POST", h2_post(lb.addr(name), length)).await;
            assert_eq!(status, 200, "through {name}, content-length {length:?}");
            assert_eq!(seen.lock().unwrap().len(), before + 1, "through {name}");
            got.push(text(&last_request(&seen)));
        }
        assert_eq!(got[1], got[0], "content-length {length:?}");
        let own = &got[1];
        let head_end = own.find("\r\n\r\n").expect("a head");
        let last_field = own[..head_end].rsplit("\r\n").next().unwrap_or_default();
        let body = &own[head_end + 4..];
        match length {
            None => {
                assert_eq!(last_field, "transfer-encoding: chunked", "{own}");
                assert_eq!(body, "B\r\nhello world\r\n0\r\n\r\n", "{own}");
            }
            Some(_) => {
                assert!(
                    own.contains("content-type: text/plain\r\ncontent-length: 11\r\n"),
                    "{own}"
                );
                assert_eq!(last_field, "x-forwarded-host: a.example", "{own}");
                assert_eq!(body, "hello world", "{own}");
            }
        }
    }
}

/// A POST of `hello world` to `/length` over h2c, its body in one DATA
/// frame after the head: the answer's status.
async fn h2_post(addr: SocketAddr, length: Option<usize>) -> u16 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut req =
        http::Request::post("http://a.example/length").header("content-type", "text/plain");
    if let Some(n) = length {
        req = req.header("content-length", n);
    }
    let (resp, mut body) = send.send_request(req.body(()).unwrap(), false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"hello world"), true)
        .unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut answer = resp.into_body();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk.unwrap();
        let _ = answer.flow_control().release_capacity(chunk.len());
    }
    drop(send);
    driver.abort();
    status
}

/// Request heads are written into shared chunks of 4 KiB (a new one when
/// less than 512 bytes are left): heads on either side of those sizes, one
/// after another, reach the backend as hyper's client writes them.
#[tokio::test]
async fn heads_of_any_size_reach_the_backend_as_through_hyper() {
    let (lb, seen, _) = two_clients().await;
    for pad in [1, 300, 450, 600, 3_000, 3_900, 4_100, 5_000, 20_000, 2, 40] {
        let req = format!(
            "GET /length HTTP/1.1\r\nHost: a.example\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "p".repeat(pad)
        );
        let before = seen.lock().unwrap().len();
        let resp = same(&lb, &seen, req.as_bytes()).await;
        assert_eq!(status(&resp), 200, "{resp}");
        // One request from each client, nothing more: a head written
        // twice would read as a second, pipelined request.
        assert_eq!(
            seen.lock().unwrap().len(),
            before + 2,
            "requests for pad {pad}"
        );
        assert!(
            text(&last_request(&seen)).contains(&"p".repeat(pad)),
            "the backend got the whole pad of {pad}"
        );
    }
}

#[tokio::test]
async fn malformed_responses_are_502_and_never_forwarded() {
    let (lb, seen, _) = two_clients().await;
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
    // The same refusal from both: the error text names each client's
    // reason, so the status and the absence of the body are compared.
    for path in ["/two-lengths", "/obs-fold"] {
        let [(hyper_resp, hyper_req), (own_resp, own_req)] =
            both(&lb, &seen, get(path).as_bytes()).await;
        assert_eq!(own_req, hyper_req, "{path}");
        assert_eq!(
            (status(&hyper_resp), status(&own_resp)),
            (502, 502),
            "{path}\n{hyper_resp}\n{own_resp}"
        );
        assert!(!own_resp.contains("hello"), "{own_resp}");
    }
    // A bad chunk size after some of the body: the head went on, the
    // body stops short without its last chunk, from either client.
    let resp = same(&lb, &seen, get("/bad-chunk-later").as_bytes()).await;
    assert!(resp.contains("hello[cut]"), "{resp}");

    // Where geolb's client is stricter than hyper's: both framings at
    // once (hyper relays the chunks) and a head over the 64 KiB the
    // server side allows (hyper reads up to about 400 KiB).
    for path in ["/both", "/big-head"] {
        let [(hyper_resp, _), (own_resp, _)] = both(&lb, &seen, get(path).as_bytes()).await;
        assert_eq!(status(&hyper_resp), 200, "{path}: {hyper_resp}");
        assert_eq!(status(&own_resp), 502, "{path}: {own_resp}");
        assert!(
            !own_resp.contains("hello") && !own_resp.contains("aaaa"),
            "{own_resp}"
        );
    }
    // A bad chunk size right after the head: hyper's client hands over
    // the head, its body fails at once, and hyper's server closes the
    // client's connection without a byte; geolb's sees the bad line with
    // the head and answers 502.
    let [(hyper_resp, _), (own_resp, _)] = both(&lb, &seen, get("/bad-chunk").as_bytes()).await;
    assert_eq!(hyper_resp, "", "hyper's client: nothing");
    assert_eq!(status(&own_resp), 502, "{own_resp}");
    // A 101 to a request that asked for no upgrade.
    let [(_, _), (own_resp, _)] = both(&lb, &seen, get("/upgrade").as_bytes()).await;
    assert_eq!(status(&own_resp), 502, "{own_resp}");
}

#[tokio::test]
async fn a_kept_connection_carries_the_next_request() {
    let (lb, seen, closed) = two_clients().await;
    // Only geolb's client: hyper's, with its connection task between,
    // sometimes has not yet taken the end of the previous response when
    // the next request looks for an idle connection, and opens another.
    for name in ["geolb"] {
        let first = seen.lock().unwrap().len();
        // Three requests pipelined on one client connection: each goes
        // out once the one before has been answered whole.
        let reqs = b"GET /length HTTP/1.1\r\nHost: a.example\r\n\r\n\
            GET /chunked HTTP/1.1\r\nHost: a.example\r\n\r\n\
            GET /no-content HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
        let resp = text(&exchange(lb.addr(name), reqs).await);
        assert_eq!(resp.matches("HTTP/1.1 20").count(), 3, "{name}: {resp}");
        let conns: Vec<usize> = seen.lock().unwrap()[first..]
            .iter()
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(conns.len(), 3, "{name}");
        assert!(
            conns.iter().all(|c| *c == conns[0]),
            "{name}: one backend connection, not {conns:?}"
        );
    }
    // A body left unsent (the client went away) closes its backend
    // connection rather than keeping it. (A smaller one would fit whole in
    // the sockets' buffers: sent, its connection is rightly kept.)
    let mut s = TcpStream::connect(lb.addr("geolb")).await.unwrap();
    s.write_all(b"GET /huge HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    let mut some = [0u8; 1024];
    let _ = s.read(&mut some).await;
    let conn = last_conn(&seen);
    drop(s);
    eventually(
        "the backend connection closed",
        Duration::from_secs(3),
        || {
            let closed = closed.lock().unwrap().contains(&conn);
            async move { closed }
        },
    )
    .await;
}

/// A chunked answer that comes a few bytes a read (every size line, data
/// and CRLF cut across reads) reaches the client as through hyper's
/// client, whole, with and without trailers.
#[tokio::test]
async fn a_chunked_answer_coming_in_pieces_reaches_the_client_alike() {
    let (lb, seen, _) = two_clients().await;
    for path in ["/trickle", "/trickle-trailers"] {
        let resp = same(&lb, &seen, &get(path, "TE: trailers\r\n")).await;
        let want = format!(
            "firstsecond chunkend{}[end]",
            String::from_utf8_lossy(&pattern(3, 300))
        );
        assert!(resp.contains(&want), "{path}: {resp}");
        assert_eq!(
            resp.contains("x-sum: 42"),
            path == "/trickle-trailers",
            "{resp}"
        );
    }
}

/// A backend that answered in HTTP/1.0 gets no chunked body on that
/// connection (RFC 9112 §6.1), though it offered to keep it: geolb's
/// client does not use it again. The chunked upload that comes next goes
/// on another connection, whole.
#[tokio::test]
async fn an_http10_backends_connection_is_not_used_again() {
    let (lb, seen, _) = two_clients().await;
    let resp = text(&exchange(lb.addr("geolb"), &get("/http10-kept", "")).await);
    assert_eq!(status(&resp), 200, "{resp}");
    let kept = last_conn(&seen);
    let upload = b"POST /length HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\
        Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let resp = text(&exchange(lb.addr("geolb"), upload).await);
    assert_eq!(status(&resp), 200, "{resp}");
    assert_ne!(last_conn(&seen), kept, "the HTTP/1.0 backend's connection");
    let got = text(&last_request(&seen));
    assert!(
        got.starts_with("POST /length HTTP/1.1\r\n")
            && got.contains("transfer-encoding: chunked\r\n")
            && got.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        "{got}"
    );
}

#[tokio::test]
async fn a_kept_connection_the_backend_closed_is_not_used() {
    for (tls, over) in cleartext_and_tls() {
        let (lb, seen, closed) = two_clients_over(tls).await;
        a_closed_connection_is_not_used(&lb, &seen, &closed, over).await;
    }
}

/// A kept connection the backend closed is not taken: with `retries =
/// 0`, taking it would be a 502.
async fn a_closed_connection_is_not_used(lb: &Lb, seen: &Seen, closed: &Closed, over: &str) {
    for client in ["hyper", "geolb"] {
        let resp = text(&exchange(lb.addr(client), &get("/then-close", "")).await);
        assert_eq!(status(&resp), 200, "{client} over {over}: {resp}");
        let conn = last_conn(seen);
        eventually("the backend closed its connection", LIMIT, || {
            let closed = closed.lock().unwrap().contains(&conn);
            async move { closed }
        })
        .await;
        let resp = text(&exchange(lb.addr(client), &get("/length", "")).await);
        assert_eq!(status(&resp), 200, "{client} over {over}: {resp}");
        let next = last_conn(seen);
        assert_ne!(next, conn, "{client} over {over}");
    }
}

/// A backend that holds each answer until `gate` opens, and notes each
/// connection when its head arrives (`heads`) and when geolb closes it
/// (`closed`).
struct GatedBackend {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<usize>>>,
    closed: Closed,
    gate: tokio::sync::watch::Sender<bool>,
}

async fn gated_backend() -> GatedBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Arc<Mutex<Vec<usize>>> = Default::default();
    let closed: Closed = Default::default();
    let (gate, open) = tokio::sync::watch::channel(false);
    let (h, c) = (heads.clone(), closed.clone());
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            n += 1;
            let (h, c, mut open) = (h.clone(), c.clone(), open.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(end) =
                    read_until(&mut s, &mut buf, |b| find(b, b"\r\n\r\n").map(|i| i + 4)).await
                {
                    buf.drain(..end);
                    h.lock().unwrap().push(n);
                    if open.wait_for(|o| *o).await.is_err()
                        || s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
                c.lock().unwrap().push(n);
            });
        }
    });
    GatedBackend {
        addr,
        heads,
        closed,
        gate,
    }
}

/// Two requests on two client connections at once: the backend holds
/// both heads, on two connections, before either is answered. Returns
/// the two backend connections.
async fn two_at_once(lb_addr: SocketAddr, backend: &GatedBackend) -> Vec<usize> {
    backend.gate.send_replace(false);
    let first = backend.heads.lock().unwrap().len();
    let req = b"GET /a HTTP/1.1\r\nHost: a.example\r\n\r\n";
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(lb_addr).await.unwrap();
        s.write_all(req).await.unwrap();
        clients.push(s);
    }
    let heads = backend.heads.clone();
    eventually("two heads held", LIMIT, || {
        let held = heads.lock().unwrap().len() - first;
        async move { held == 2 }
    })
    .await;
    backend.gate.send_replace(true);
    for mut s in clients {
        let resp = bounded(LIMIT, "an answer", async {
            let mut buf = Vec::new();
            read_until(&mut s, &mut buf, |b| b.ends_with(b"ok").then_some(b.len())).await;
            buf
        })
        .await;
        assert!(text(&resp).starts_with("HTTP/1.1 200"), "{}", text(&resp));
    }
    backend.heads.lock().unwrap()[first..].to_vec()
}

#[tokio::test]
async fn max_idle_caps_the_connections_kept_per_backend() {
    for client in ["geolb", "hyper"] {
        for max_idle in [Some(1), None] {
            let backend = gated_backend().await;
            let cap = max_idle.map_or(String::new(), |n| format!("max_idle = {n}\n"));
            let pools = format!(
                "[[pool]]\nname = \"capped_{client}\"\nhttp1_client = \"{client}\"\n{cap}\
                 backends = [{{ addr = \"{}\" }}]\n",
                backend.addr
            );
            let spec = ListenerSpec {
                name: "web",
                protocol: "http",
                pool: &format!("capped_{client}"),
                extra: "retries = 0".to_owned(),
            };
            let lb = Lb::start(&pools, &[spec]).await;
            let first = two_at_once(lb.addr("web"), &backend).await;
            assert!(first[0] != first[1], "{client}: two connections, {first:?}");
            // hyper's client puts a connection back from its own task,
            // after the client has its answer: both must be back (one
            // kept, one closed, with the cap) before the next two.
            let (want_kept, want_closed) = (max_idle.unwrap_or(2), usize::from(max_idle.is_some()));
            let closed = backend.closed.clone();
            eventually("the connections put back", LIMIT, || {
                let kept = lb.idle(&format!("capped_{client}"), 0);
                let gone = closed.lock().unwrap().len();
                async move { kept == want_kept && gone == want_closed }
            })
            .await;
            let next = two_at_once(lb.addr("web"), &backend).await;
            match max_idle {
                Some(_) => {
                    // The kept one was taken again, and a new one opened.
                    let closed = backend.closed.lock().unwrap().clone();
                    let kept: Vec<usize> = first
                        .iter()
                        .copied()
                        .filter(|c| !closed.contains(c))
                        .collect();
                    assert_eq!(kept.len(), 1, "{client}: {first:?} {closed:?}");
                    assert!(
                        next.contains(&kept[0]) && next.iter().any(|c| !first.contains(c)),
                        "{client}: the kept one and a new one, not {next:?} (first {first:?})"
                    );
                }
                None => {
                    let mut both = next.clone();
                    both.sort_unstable();
                    let mut was = first.clone();
                    was.sort_unstable();
                    assert_eq!(both, was, "{client}: both kept by default");
                    assert!(backend.closed.lock().unwrap().is_empty(), "{client}");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_reload_lowering_max_idle_closes_the_oldest_idle_connections() {
    let backend = gated_backend().await;
    let config = |cap: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[pool]]\nname = \"p\"\n{cap}backends = [{{ addr = \"{}\" }}]\n\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nretries = 0\n",
            backend.addr
        )
    };
    let geolb = support::Geolb::start(&config("")).await;
    let web = geolb.listeners["web"];
    // geolb's own client puts a connection back as its body ends, before
    // the client has the last byte: both are idle once both answers are in.
    let first = two_at_once(web, &backend).await;
    assert!(first[0] != first[1], "two connections, {first:?}");
    assert!(backend.closed.lock().unwrap().is_empty());

    geolb.write_config(&config("max_idle = 1\n")).unwrap();
    let (code, _, body) = support::request(geolb.admin, "POST", "/reload", &[], Default::default())
        .await
        .unwrap();
    assert_eq!(code, 200, "{body:?}");
    let closed = backend.closed.clone();
    eventually("one idle connection closed by the reload", LIMIT, || {
        let n = closed.lock().unwrap().len();
        async move { n == 1 }
    })
    .await;
    // The one left carries the next request.
    let gone = backend.closed.lock().unwrap()[0];
    let kept = *first.iter().find(|c| **c != gone).unwrap();
    let resp = exchange(
        web,
        b"GET /a HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text(&resp).starts_with("HTTP/1.1 200"), "{}", text(&resp));
    assert_eq!(backend.heads.lock().unwrap().last(), Some(&kept));
}

/// Pools with `tls` are spoken to by geolb's client too: over TLS the
/// backend receives, and the client gets, what hyper's client sends and
/// relays, for answers of every framing, large ones, request bodies; and
/// the backend connection (its handshake) serves the next request.
#[tokio::test]
async fn over_tls_both_clients_send_and_relay_the_same_bytes() {
    let (lb, seen, _) = two_clients_over(Some(backend_tls())).await;
    for path in [
        "/length",
        "/close",
        "/http10",
        "/no-content",
        "/informational",
        "/cut",
        "/large",
        "/large-chunked",
        "/large-close",
    ] {
        let resp = same(&lb, &seen, &get(path, "")).await;
        assert!(
            status(&resp) >= 200,
            "{path}: {}",
            &resp[..resp.len().min(300)]
        );
    }
    let resp = same(&lb, &seen, &get("/chunked", "TE: trailers\r\n")).await;
    assert!(
        resp.ends_with("hello world[end]x-sum: 42\r\n\r\n"),
        "{resp}"
    );
    // A body that ends at the close is whole only if TLS said so with
    // `close_notify` (RFC 9112 §9.8); a bare TCP close could be an
    // attacker's cut, and reaches the client as one (no last chunk).
    let whole = same(&lb, &seen, &get("/close-notified", "")).await;
    assert!(whole.ends_with("until the end[end]\r\n"), "{whole}");
    let cut = same(&lb, &seen, &get("/close", "")).await;
    assert!(cut.ends_with("until the end[cut]"), "{cut}");
    let mut upload = format!(
        "POST /length HTTP/1.1\r\nHost: a.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        1_200_000
    )
    .into_bytes();
    upload.extend_from_slice(&pattern(3, 1_200_000));
    let chunked: &[u8] = b"POST /length HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\
        Trailer: X-Sum\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n";
    for req in [&upload[..], chunked] {
        let resp = same(&lb, &seen, req).await;
        assert_eq!(status(&resp), 200, "{resp}");
    }
    // Pipelined: each request goes out on the connection the one before
    // was answered on.
    let first = seen.lock().unwrap().len();
    let reqs = b"GET /length HTTP/1.1\r\nHost: a.example\r\n\r\n\
        GET /chunked HTTP/1.1\r\nHost: a.example\r\n\r\n\
        GET /no-content HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    let resp = text(&exchange(lb.addr("geolb"), reqs).await);
    assert_eq!(resp.matches("HTTP/1.1 20").count(), 3, "{resp}");
    let conns: Vec<usize> = seen.lock().unwrap()[first..]
        .iter()
        .map(|(c, _)| *c)
        .collect();
    assert!(
        conns.len() == 3 && conns.iter().all(|c| *c == conns[0]),
        "one backend connection, not {conns:?}"
    );
}

/// Bytes a backend sent past its answer, on a connection it keeps open,
/// are not taken for the next request's answer: the connection is not
/// used again, in cleartext and over TLS. (Bytes that rustls decrypted and
/// holds, rather than the socket or geolb's buffer: the unit test
/// `a_tls_connection_holding_unread_bytes_is_not_open_for_use`.)
#[tokio::test]
async fn bytes_past_an_answer_are_never_the_next_answer() {
    for (tls, over) in cleartext_and_tls() {
        let (lb, seen, _) = two_clients_over(tls).await;
        let resp = text(&exchange(lb.addr("geolb"), &get("/then-stray", "")).await);
        assert_eq!(
            status(&resp),
            200,
            "{over}: {}",
            &resp[..resp.len().min(200)]
        );
        assert!(!resp.contains("stray"), "{over}: the stray answer went out");
        let conn = last_conn(&seen);
        let resp = text(&exchange(lb.addr("geolb"), &get("/length", "")).await);
        assert!(resp.ends_with("\r\n\r\nhello"), "{over}: {resp}");
        let next = last_conn(&seen);
        assert_ne!(next, conn, "{over}: the connection was used again");
    }
}

/// A reload that changes a pool's `tls` leaves the TLS connections opened
/// the old way unused (they are kept apart by how they were opened): they
/// are closed once idle past the 4 s any kept connection may wait,
/// rather than held open for good.
#[tokio::test]
async fn tls_connections_of_settings_a_reload_replaced_are_closed_as_they_age() {
    let (backend, seen, closed) = scripted_backend_over(Some(backend_tls())).await;
    let config = |tls: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[pool]]\nname = \"p\"\ntls = {tls}\nbackends = [{{ addr = \"{backend}\" }}]\n\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nretries = 0\n"
        )
    };
    let geolb = support::Geolb::start(&config("{ verify = false }")).await;
    let web = geolb.listeners["web"];
    let resp = text(&exchange(web, &get("/length", "")).await);
    assert!(resp.ends_with("hello"), "{resp}");
    let old = last_conn(&seen);

    geolb
        .write_config(&config("{ verify = false, sni = \"other.example\" }"))
        .unwrap();
    let (code, _, body) = support::request(geolb.admin, "POST", "/reload", &[], Default::default())
        .await
        .unwrap();
    assert_eq!(code, 200, "{body:?}");
    // Requests keep coming under the new settings, on a connection of
    // their own; the old one goes once it has aged.
    eventually("the old settings' connection closed", LIMIT, || {
        let (closed, seen) = (closed.clone(), seen.clone());
        async move {
            let resp = text(&exchange(web, &get("/length", "")).await);
            assert!(resp.ends_with("hello"), "{resp}");
            let last = last_conn(&seen);
            assert_ne!(last, old, "a request went out the old way");
            tokio::time::sleep(Duration::from_millis(200)).await;
            closed.lock().unwrap().contains(&old)
        }
    })
    .await;
}

/// How the two clients are to relay a generated answer.
#[derive(Debug, PartialEq)]
enum Relayed {
    /// Byte for byte alike.
    Alike,
    /// Framed both by a length and by chunks: geolb's client refuses it
    /// (502), hyper's relays the chunks (see
    /// `malformed_responses_are_502_and_never_forwarded`).
    GeolbRefuses,
    /// A bad chunk-size line right behind the head: hyper's client hands
    /// on the head and fails the body, so its server closes without a
    /// byte; geolb's sees the line with the head and answers 502.
    HyperCloses,
}

struct Answer {
    bytes: Vec<u8>,
    close: bool,
    relayed: Relayed,
    status: u16,
}

/// An answer made from a seed: the shapes backends send (a 1xx first,
/// statuses with and without a body, reasons custom, empty or missing,
/// HTTP/1.0, bare LF), framed by a length, by chunks (sizes upper-case or
/// zero-padded, extensions, trailers announced or not) or by the close,
/// with hop-by-hop fields, names in any case, values with tabs, spaces
/// and bytes that are not ASCII; one in ten malformed in one place.
fn generated_answer(rng: &mut fastrand::Rng) -> Answer {
    use support::generated::{cased, pick};
    let eol = if rng.u8(..30) == 0 { "\n" } else { "\r\n" };
    let http10 = rng.u8(..12) == 0;
    let status = pick(
        rng,
        &[
            "200", "200", "200", "201", "204", "206", "299", "301", "304", "404", "500", "503",
        ],
    );
    let canonical = match status {
        "200" => "OK",
        "201" => "Created",
        "204" => "No Content",
        "206" => "Partial Content",
        "301" => "Moved Permanently",
        "304" => "Not Modified",
        "404" => "Not Found",
        "500" => "Internal Server Error",
        "503" => "Service Unavailable",
        _ => "Fine Thanks",
    };
    let line = match rng.u8(..10) {
        0 => format!("{status} Custom Words"),
        1 => format!("{status} "),
        2 => status.to_owned(),
        _ => format!("{status} {canonical}"),
    };
    let mut bytes = Vec::new();
    if !http10 && rng.u8(..8) == 0 {
        let informational = pick(
            rng,
            &[
                "HTTP/1.1 100 Continue\r\n\r\n",
                "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
            ],
        );
        bytes.extend_from_slice(informational.as_bytes());
    }
    let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    bytes.extend_from_slice(format!("{version} {line}{eol}").as_bytes());
    let bodiless = status == "204" || status == "304";
    let body: Vec<u8> = (0..rng.usize(0..40))
        .map(|i| b"klmnopqrst"[(i + rng.usize(..10)) % 10])
        .collect();
    let mut fields: Vec<String> = Vec::new();
    let mut close = false;
    let mut relayed = Relayed::Alike;
    let mut framed = Vec::new();
    let framing = if bodiless {
        "none"
    } else if http10 {
        pick(rng, &["length", "close"])
    } else {
        pick(
            rng,
            &["length", "length", "chunked", "chunked", "close", "both"],
        )
    };
    let chunks = |rng: &mut fastrand::Rng, body: &[u8], fields: &mut Vec<String>| {
        let mut out = support::generated::chunks(rng, body);
        out.extend_from_slice(b"0\r\n");
        match rng.u8(..6) {
            0 => {
                fields.push("Trailer: X-Sum".into());
                out.extend_from_slice(b"X-Sum: 42\r\n");
            }
            1 => out.extend_from_slice(b"X-Unannounced: 1\r\n"),
            _ => {}
        }
        out.extend_from_slice(b"\r\n");
        out
    };
    match framing {
        "length" => {
            fields.push(format!("{}: {}", cased(rng, "Content-Length"), body.len()));
            framed = body.clone();
            close = rng.u8(..8) == 0;
        }
        "chunked" | "both" => {
            fields.push(format!("{}: chunked", cased(rng, "Transfer-Encoding")));
            framed = chunks(rng, &body, &mut fields);
            if framing == "both" {
                fields.push(format!("Content-Length: {}", framed.len()));
                relayed = Relayed::GeolbRefuses;
            }
        }
        "close" => {
            framed = body.clone();
            close = true;
        }
        _ => {}
    }
    for _ in 0..rng.usize(0..6) {
        let field = pick(
            rng,
            &[
                "Server: gen",
                "Content-Type: text/plain",
                "Set-Cookie: a=1",
                "Set-Cookie: b=2; Path=/",
                "X-Request-Id: the-backends",
                "Connection: keep-alive",
                "Connection: X-Hop",
                "X-Hop: secret",
                "Keep-Alive: timeout=5",
                "Proxy-Connection: keep-alive",
                "Upgrade: h2c",
                "TE: trailers",
                "X-Pad: \t spaced \t",
                "X-Obs: caf\u{e9}",
                "X-Empty:",
                "Cache-Control: no-store",
                "ETag: \"v1\"",
                "Vary: Accept-Encoding",
                "Content-Language: en",
            ],
        );
        // An HTTP/1.0 answer's connection is used again by hyper's client
        // when it offers to keep it, speaking HTTP/1.0 on it, by geolb's
        // never (`an_http10_backends_connection_is_not_used_again`): the
        // next case's request would differ.
        if http10 && field == "Connection: keep-alive" {
            continue;
        }
        let (name, value) = field.split_once(':').expect("a field");
        let at = rng.usize(..=fields.len());
        fields.insert(at, format!("{}:{value}", cased(rng, name)));
    }
    // Not on an answer framed both ways, which hyper's client relays only
    // while it is otherwise well formed.
    if rng.u8(..10) == 0 && framing != "both" {
        match rng.u8(..4) {
            0 if framing == "length" => {
                fields.push(format!("Content-Length: {}", body.len() + 1));
            }
            1 if framing == "chunked" => {
                framed = b"zz\r\nklm\r\n0\r\n\r\n".to_vec();
                relayed = Relayed::HyperCloses;
                close = true;
            }
            2 if framing == "chunked" && !body.is_empty() => {
                // A bad size line after the first chunk.
                framed = format!("1\r\n{}\r\nzz\r\n0\r\n\r\n", body[0] as char).into_bytes();
                close = true;
            }
            _ => fields.push("X-Folded: one\r\n two".into()),
        }
    }
    for f in fields {
        bytes.extend_from_slice(f.as_bytes());
        bytes.extend_from_slice(eol.as_bytes());
    }
    bytes.extend_from_slice(eol.as_bytes());
    bytes.extend_from_slice(&framed);
    Answer {
        bytes,
        close,
        relayed,
        status: status.parse().expect("a status"),
    }
}

/// Answers made from a seed ([`generated_answer`]) through both clients,
/// in cleartext: what the backend got and what the client got alike, but
/// where geolb's client differs on purpose (the answer says which).
/// `GEOLB_H1_CASES` (default 1,000, about a second) and `GEOLB_H1_SEED`
/// run more or other cases by hand; a failure names its seed.
#[tokio::test]
async fn generated_answers_are_relayed_alike() {
    let (lb, seen, _) = two_clients().await;
    generated_answers_alike(
        &lb,
        &seen,
        support::generated::seeds(1000, 0x6765_6f6c_6232),
    )
    .await;
}

/// The same over TLS backends, other seeds: the answer comes in the
/// records rustls decrypts, not in the socket's reads. The backend ends
/// a closing answer with `close_notify`, so that a body framed by the
/// close is whole; a bare close is a cut (`/close` over TLS).
#[tokio::test]
async fn generated_answers_are_relayed_alike_over_tls() {
    let (lb, seen, _) = two_clients_over(Some(backend_tls())).await;
    generated_answers_alike(&lb, &seen, support::generated::seeds(300, 0x6765_6f6c_6234)).await;
}

async fn generated_answers_alike(lb: &Lb, seen: &Seen, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let answer = generated_answer(&mut fastrand::Rng::with_seed(seed));
        let request = generated_request(seed);
        let case = format!(
            "GEOLB_H1_SEED={seed}: {:?}",
            String::from_utf8_lossy(&answer.bytes)
        );
        let [(hyper_resp, hyper_req), (own_resp, own_req)] = both_raw(lb, seen, &request).await;
        assert_eq!(
            by_name(&own_req),
            by_name(&hyper_req),
            "{case}: the backend got"
        );
        let (own_resp, hyper_resp) = (by_name(&own_resp), by_name(&hyper_resp));
        match answer.relayed {
            // Refused by both: the error text names each client's reason.
            Relayed::Alike if status(&own_resp) == 502 => {
                assert_eq!(status(&hyper_resp), 502, "{case}: {hyper_resp}")
            }
            Relayed::Alike => assert_eq!(own_resp, hyper_resp, "{case}: the client got"),
            Relayed::GeolbRefuses => {
                assert_eq!(status(&own_resp), 502, "{case}: {own_resp}");
                assert_eq!(status(&hyper_resp), answer.status, "{case}: {hyper_resp}");
            }
            Relayed::HyperCloses => {
                assert_eq!(hyper_resp, "", "{case}");
                assert_eq!(status(&own_resp), 502, "{case}: {own_resp}");
            }
        }
    }
}

/// The request for the generated answer of `seed`: a GET, with `TE:
/// trailers` or not, or an upload by length or by chunks (with trailer
/// fields, announced or not), so that what each client writes is
/// compared too.
fn generated_request(seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x0072_6571_7565_7374);
    let path = format!("/gen/{seed}");
    let body: Vec<u8> = (0..rng.usize(1..30))
        .map(|_| rng.alphanumeric() as u8)
        .collect();
    match rng.u8(..5) {
        0 => get(&path, "TE: trailers\r\n"),
        1 => {
            let mut r = format!(
                "POST {path} HTTP/1.1\r\nHost: a.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(&body);
            r
        }
        2 => {
            let announced = if rng.bool() { "Trailer: X-Sum\r\n" } else { "" };
            let mut r = format!(
                "PUT {path} HTTP/1.1\r\nHost: a.example\r\n{announced}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )
            .into_bytes();
            r.extend_from_slice(&support::generated::chunks(&mut rng, &body));
            r.extend_from_slice(b"0\r\n");
            if rng.bool() {
                r.extend_from_slice(b"X-Sum: 42\r\nX-Other: 1\r\n");
            }
            r.extend_from_slice(b"\r\n");
            r
        }
        _ => get(&path, ""),
    }
}

/// A message's bytes as compared when the order of fields of different
/// names is not (RFC 9110 §5.3), nor the sizes of its chunks (the reads
/// that brought an upload to the proxy): each head (a 1xx's, then the answer's)
/// with its `Date` dropped and its fields sorted by name (a name's in the
/// order they came), then the body, decoded if chunked. Both clients
/// reorder a head's fields when they strip hop-by-hop ones from a map
/// (the map moves its last field into the place of one removed), and
/// geolb's builds no field it would strip at once (`Keep-Alive`), so
/// where a head has those the others may come in another order.
fn by_name(resp: &[u8]) -> String {
    let mut out = String::new();
    let mut rest = resp;
    loop {
        let Some(head_end) = find(rest, b"\r\n\r\n") else {
            out.push_str(&text(rest));
            return out;
        };
        let head = text(&rest[..head_end]);
        rest = &rest[head_end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut fields: Vec<&str> = lines
            .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
            .collect();
        fields.sort_by_key(|l| l.split(':').next().unwrap_or("").to_owned());
        out.push_str(&format!("{status_line}\r\n{}\r\n\r\n", fields.join("\r\n")));
        if status_line
            .split(' ')
            .nth(1)
            .is_some_and(|c| c.starts_with('1'))
        {
            continue;
        }
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        out.push_str(&if chunked { dechunk(rest) } else { text(rest) });
        return out;
    }
}
