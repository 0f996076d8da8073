//! geolb's own HTTP/1 server (`http1_server = "geolb"`) against hyper's:
//! one geolb, two listeners on one pool of a raw recording backend, the
//! same bytes sent to each; what the backend receives and what the client
//! receives must be equal byte for byte, but for the `Date` value (the
//! second it was written in, which two runs need not share).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Geolb, bounded, rss_kib};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const LIMIT: Duration = Duration::from_secs(5);

/// What the backend got: each request's raw bytes (head and body as
/// framed), a partial one too when its connection ended mid-request.
#[derive(Clone, Default)]
struct Record {
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Requests whose head came and whose end has not.
    open: Arc<AtomicUsize>,
}

impl Record {
    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

/// Where a request's body ends in `buf` (from `start`), by its head's
/// framing; `None` while incomplete.
fn body_end(head: &str, buf: &[u8], start: usize) -> Option<usize> {
    let lower = head.to_ascii_lowercase();
    if lower.contains("\r\ntransfer-encoding: chunked") {
        let mut at = start;
        loop {
            let line_end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
            let size = std::str::from_utf8(&buf[at..line_end]).ok()?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // The last chunk's line ends the trailer section that
                // follows, with or without fields.
                let from = line_end;
                let end = from + buf.get(from..)?.windows(4).position(|w| w == b"\r\n\r\n")?;
                return Some(end + 4);
            }
            at = line_end + 2 + size + 2;
            if at > buf.len() {
                return None;
            }
        }
    }
    let len = lower
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= start + len).then_some(start + len)
}

/// The answer to a request for `path` (`head`: its method).
fn answer(method: &str, path: &str, body_len: usize) -> Vec<u8> {
    let text = format!("{method} {path} with {body_len} bytes\n");
    let with_length = |status: &str, extra: &str, body: &[u8]| {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if method != "HEAD" {
            r.extend_from_slice(body);
        }
        r
    };
    match path {
        // Sizes in upper case, as hyper's server writes them: geolb's
        // passes a backend's chunks on as they came, hyper's makes them
        // anew (`chunks_pass_as_the_backend_framed_them`).
        "/chunked" => format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n{:X}\r\n{text}\r\n0\r\n\r\n",
            text.len()
        )
        .into_bytes(),
        // Chunked as backends write it, sizes in lower case or padded,
        // with an extension on one.
        "/framed" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nfirst\r\n00c\r\nsecond chunk\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n\
            3;ext=1\r\nend\r\n0\r\n\r\n"
            .to_vec(),
        // Trailers: one announced, one that must not be a trailer, one
        // not announced; only the first reaches a client that takes them.
        "/trailers" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum, Content-Type\r\n\r\n\
            5\r\nfirst\r\n0\r\nX-Sum: 42\r\nContent-Type: text/evil\r\nX-Late: 1\r\n\r\n"
            .to_vec(),
        "/big" => with_length("200 OK", "", &support::library::pattern(7, 300_000)),
        "/8k" => with_length("200 OK", "", &support::library::pattern(8, 8192)),
        "/204" => b"HTTP/1.1 204 No Content\r\nX-Empty: yes\r\n\r\n".to_vec(),
        "/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec(),
        "/reason" => with_length("200 Fine Thanks", "", text.as_bytes()),
        "/cookie" => with_length("200 OK", "Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n", text.as_bytes()),
        "/ws" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec(),
        _ => with_length("200 OK", "X-Backend: raw\r\n", text.as_bytes()),
    }
}

/// A backend that records every request and answers by its path;
/// `/nolength` is answered without a length, ended by closing; after
/// `/ws`, it echoes what comes.
async fn recording_backend() -> (SocketAddr, Record) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let record = Record::default();
    let r = record.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                let mut counted = false;
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(n) if n > 0 => n,
                        _ => {
                            if counted {
                                r.requests.lock().unwrap().push(seen);
                                r.open.fetch_sub(1, Ordering::SeqCst);
                            }
                            return;
                        }
                    };
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        if !counted {
                            counted = true;
                            r.open.fetch_add(1, Ordering::SeqCst);
                        }
                        let head = String::from_utf8_lossy(&seen[..end + 4]).into_owned();
                        let Some(done) = body_end(&head, &seen, end + 4) else {
                            break;
                        };
                        let request: Vec<u8> = seen.drain(..done).collect();
                        let mut line = head.split(' ');
                        let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
                        // Its data, not its framing: chunk sizes are the
                        // reads that brought the body, not either server's.
                        let data = body_of(&String::from_utf8_lossy(&request)).0.len();
                        let resp = answer(method, path, data);
                        r.requests.lock().unwrap().push(request);
                        r.open.fetch_sub(1, Ordering::SeqCst);
                        counted = false;
                        if path == "/nolength" {
                            let _ = s
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end\n",
                                )
                                .await;
                            return;
                        }
                        if s.write_all(&resp).await.is_err() {
                            return;
                        }
                        if path == "/ws" {
                            let (mut rd, mut wr) = s.split();
                            let _ = tokio::io::copy(&mut rd, &mut wr).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, record)
}

/// One step of a client's script.
enum Step {
    Send(Vec<u8>),
    /// Read until the bytes read so far hold this.
    Await(&'static str),
    /// Close the sending side.
    Shut,
}

use Step::*;

fn send(s: impl AsRef<[u8]>) -> Step {
    Send(s.as_ref().to_vec())
}

/// Runs `script` on a new connection to `addr`; everything read until the
/// server closes (or [`LIMIT`] passes), `Date` values blanked.
/// Over TLS with `tls` (a connector trusting the listeners' certificate
/// for `a.test`).
async fn run(addr: SocketAddr, script: &[Step], tls: Option<&TlsConnector>) -> String {
    match tls {
        None => run_on(TcpStream::connect(addr).await.unwrap(), script).await,
        Some(tls) => {
            let s = support::library::tls_connect(tls, addr, "a.test");
            run_on(s.await.unwrap(), script).await
        }
    }
}

async fn run_on<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, script: &[Step]) -> String {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for step in script {
        match step {
            Send(bytes) => {
                // A server that closed early may refuse the rest.
                let _ = s.write_all(bytes).await;
            }
            Await(what) => {
                let wait = async {
                    while !String::from_utf8_lossy(&got).contains(what) {
                        match s.read(&mut buf).await {
                            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                            _ => break,
                        }
                    }
                };
                let _ = tokio::time::timeout(LIMIT, wait).await;
            }
            Shut => {
                let _ = s.shutdown().await;
            }
        }
    }
    let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut got)).await;
    normalize(&String::from_utf8_lossy(&got))
}

/// The values that differ by nature blanked: `Date` (the second it was
/// written in) and `X-Request-Id` (new and random for each request).
fn normalize(text: &str) -> String {
    blank(&blank(text, "\r\ndate: ", 29), "\r\nx-request-id: ", 32)
}

/// Each value after `name` (`len` characters) replaced by `*`.
fn blank(text: &str, name: &str, len: usize) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(name) {
        let value = at + name.len();
        out.push_str(&rest[..value]);
        out.push('*');
        rest = rest.get(value + len..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

struct Pair {
    geolb: Geolb,
    record: Record,
    /// Both listeners over TLS: the client's connector, and the test
    /// PKI whose files the listeners read.
    tls: Option<(TlsConnector, support::library::Pki)>,
}

impl Pair {
    async fn start() -> Pair {
        Pair::start_on("").await
    }

    /// With `runtime`'s lines in the config (`[runtime]` and its keys).
    async fn start_on(runtime: &str) -> Pair {
        Pair::start_with(runtime, "", "").await
    }

    /// With `runtime`'s lines in the config, `pool`'s in the pool's table
    /// and `listener`'s in both listeners'.
    async fn start_with(runtime: &str, pool: &str, listener: &str) -> Pair {
        let (addr, record) = recording_backend().await;
        let config = format!(
            "{runtime}[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{addr}\" }}]\n{pool}\
             [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nhttp1_server = \"hyper\"\n{listener}\
             [[listener]]\nname = \"geolb\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nhttp1_server = \"geolb\"\n{listener}"
        );
        let geolb = Geolb::start(&config).await;
        Pair {
            geolb,
            record,
            tls: None,
        }
    }

    /// Both listeners HTTPS, with `runtime`'s lines in the config.
    async fn start_tls(runtime: &str) -> Pair {
        let pki = support::library::Pki::new();
        let leaf = pki.leaf("a.test", &["a.test"]);
        let listener = format!(
            "protocol = \"https\"\n{}\n",
            support::library::tls_list(&[&leaf])
        );
        let mut pair = Pair::start_with(runtime, "", &listener).await;
        pair.tls = Some((pki.client(&[b"http/1.1"]), pki));
        pair
    }

    /// The client's and the backend's view of `script` through `listener`.
    async fn through(&self, listener: &str, script: &[Step]) -> (String, Vec<String>) {
        let tls = self.tls.as_ref().map(|(connector, _)| connector);
        let client = run(self.geolb.listener(listener), script, tls).await;
        // A request the client gave up on may still be on its way to the
        // backend after the client saw the end: wait until the backend
        // has been between requests, with nothing new, for a while.
        let quiet = async {
            let mut last = usize::MAX;
            loop {
                let now = self.record.requests.lock().unwrap().len();
                if now == last && self.record.open.load(Ordering::SeqCst) == 0 {
                    break;
                }
                last = now;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        };
        bounded(LIMIT, "the backend is between requests", quiet).await;
        let backend = self
            .record
            .take()
            .iter()
            .map(|r| normalize(&String::from_utf8_lossy(r)))
            .collect();
        (client, backend)
    }

    /// Runs `script` through both servers; panics where they differ.
    /// Returns hyper's client view, for cases that check it too.
    async fn same(&self, case: &str, script: &[Step]) -> String {
        self.compared(case, script, str::to_owned, str::to_owned)
            .await
    }

    /// As [`Pair::same`], less the differences geolb's server has on
    /// purpose: what the backend got compared by [`by_name`] (a request's
    /// fields of different names may come in another order: geolb's
    /// server writes the fields it passes unread after the map's) and
    /// [`body_of`] (chunks as the client's writes cut them); a
    /// head refused after an HTTP/1.0 request answered as any refused
    /// head (hyper answers it in HTTP/1.0, its last request's version,
    /// and without `Connection: close`; geolb's server, as to a first
    /// head, in HTTP/1.1 with it, which says the close to either); and
    /// `100 Continue` left out where the body came with its head (hyper
    /// always sends one, geolb's server when the body is read before the
    /// answer is ready: a server that has the content may omit it, RFC
    /// 9110 §10.1.1; the hand-picked "expect 100-continue" case, whose
    /// client waits for it, checks that it comes when it must).
    async fn alike(&self, case: &str, script: &[Step]) -> String {
        let backend = |r: &str| (by_name(r), body_of(r));
        let client = |c: &str| {
            c.replace(
                "HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\n",
                "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n",
            )
            .replace("HTTP/1.1 100 Continue\r\n\r\n", "")
        };
        self.compared(case, script, backend, client).await
    }

    /// Both servers' views of `script`, the backend's requests compared
    /// by `key` and the client's by `canon` of it.
    async fn compared<K: PartialEq + std::fmt::Debug>(
        &self,
        case: &str,
        script: &[Step],
        key: impl Fn(&str) -> K,
        canon: impl Fn(&str) -> String,
    ) -> String {
        let (hyper_client, hyper_backend) = self.through("hyper", script).await;
        let (geolb_client, geolb_backend) = self.through("geolb", script).await;
        // A body that fails (cut off, malformed) fails the backend's
        // request too; hyper's server may have let its first bytes reach
        // the backend before (its body channel yields the error on a later
        // poll), geolb's may not (the client's bytes and the failure come
        // in one read): the backend gets that request cut short or never.
        let cut_short = |r: &String| {
            let head_end = r.find("\r\n\r\n").map_or(r.len(), |i| i + 4);
            body_end(&r[..head_end], r.as_bytes(), head_end) != Some(r.len())
        };
        let mut hyper_backend = hyper_backend;
        if geolb_backend.len() + 1 == hyper_backend.len()
            && hyper_backend.last().is_some_and(cut_short)
        {
            hyper_backend.pop();
        }
        if std::env::var_os("GEOLB_H1_SHOW").is_some() {
            eprintln!(
                "hyper client: {hyper_client:?}\ngeolb client: {geolb_client:?}\nhyper backend: {hyper_backend:?}\ngeolb backend: {geolb_backend:?}"
            );
        }
        let keys = |r: &[String]| r.iter().map(|r| key(r)).collect::<Vec<K>>();
        assert_eq!(
            keys(&geolb_backend),
            keys(&hyper_backend),
            "{case}: what the backend got"
        );
        assert_eq!(
            canon(&geolb_client),
            canon(&hyper_client),
            "{case}: what the client got"
        );
        hyper_client
    }
}

const CLOSE: &str = "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn both_servers_forward_and_answer_the_same_bytes() {
    forward_and_answer_the_same_bytes(Pair::start().await).await;
}

/// On one thread (`worker_threads = 1`, a current-thread runtime: the
/// shape the benchmarks run) the same bytes must come out.
#[tokio::test]
async fn both_servers_answer_the_same_bytes_on_one_thread() {
    forward_and_answer_the_same_bytes(Pair::start_on("[runtime]\nworker_threads = 1\n\n").await)
        .await;
}

async fn forward_and_answer_the_same_bytes(pair: Pair) {
    // More than the client's socket and geolb's take before the client
    // reads: geolb's writes meet a full socket, and its reads of the
    // pipelined requests wait for them.
    let mut many = String::new();
    for i in 0..1500 {
        many.push_str(if i % 300 == 299 {
            "GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
        } else {
            "GET /8k HTTP/1.1\r\nHost: x\r\n\r\n"
        });
    }
    many.push_str(CLOSE);
    let chunked_post = "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                        4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n";
    let cases: Vec<(&str, Vec<Step>)> = vec![
        (
            "get then close",
            vec![send(format!(
                "GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n{CLOSE}"
            ))],
        ),
        (
            "post with a length",
            vec![send(
                "POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
            )],
        ),
        ("post chunked", vec![send(format!("{chunked_post}{CLOSE}"))]),
        (
            "trailers to a client that takes them, then to one that does not",
            vec![send(format!(
                "GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\nGET /trailers HTTP/1.1\r\nHost: x\r\n\r\n{CLOSE}"
            ))],
        ),
        (
            "pipelined",
            vec![send(format!(
                "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /cookie HTTP/1.1\r\nHost: x\r\n\r\n{CLOSE}"
            ))],
        ),
        (
            "many pipelined answers, more than sockets hold",
            vec![send(&many)],
        ),
        (
            "keep-alive between writes",
            vec![
                send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"),
                Await("with 0 bytes"),
                send(CLOSE),
            ],
        ),
        (
            "http/1.0",
            vec![send("GET /old HTTP/1.0\r\nHost: x\r\n\r\n")],
        ),
        (
            "http/1.0 without host",
            vec![send("GET /old HTTP/1.0\r\n\r\n")],
        ),
        (
            "http/1.0 keep-alive",
            vec![send(
                "GET /k HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\nGET /k2 HTTP/1.0\r\nHost: x\r\n\r\n",
            )],
        ),
        (
            "head",
            vec![send(
                "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nHEAD /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )],
        ),
        (
            "chunked answer",
            vec![send(format!(
                "GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n{CLOSE}"
            ))],
        ),
        (
            "chunked answer to 1.0",
            vec![send("GET /chunked HTTP/1.0\r\nHost: x\r\n\r\n")],
        ),
        (
            "no length",
            vec![send(
                "GET /nolength HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )],
        ),
        (
            "no length to 1.0",
            vec![send("GET /nolength HTTP/1.0\r\nHost: x\r\n\r\n")],
        ),
        (
            "204 and 304",
            vec![send(format!(
                "GET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /304 HTTP/1.1\r\nHost: x\r\n\r\n{CLOSE}"
            ))],
        ),
        (
            "reason phrase",
            vec![send(format!(
                "GET /reason HTTP/1.1\r\nHost: x\r\n\r\n{CLOSE}"
            ))],
        ),
        (
            "expect 100-continue",
            vec![
                send(
                    "POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
                ),
                Await("100 Continue"),
                send("body"),
            ],
        ),
        (
            "expect with an empty body",
            vec![send(
                "POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )],
        ),
        (
            "large download",
            vec![send(format!("GET /big HTTP/1.1\r\nHost: x\r\n\r\n{CLOSE}"))],
        ),
        (
            "client gone mid-body",
            vec![
                send("POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly some"),
                Shut,
            ],
        ),
        (
            "get with a chunked body",
            vec![send(
                "GET /gb HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            )],
        ),
        (
            "connect",
            vec![send("CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n")],
        ),
        ("no host", vec![send("GET / HTTP/1.1\r\n\r\n")]),
        (
            "absolute form",
            vec![send(
                "GET http://y/abs?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )],
        ),
        (
            "hop-by-hop and forwarded",
            vec![send(
                "GET /f HTTP/1.1\r\nHost: x\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\n\
             X-Forwarded-For: 10.0.0.1\r\nTE: trailers\r\n\r\n",
            )],
        ),
    ];
    for (case, script) in &cases {
        let client = pair.same(case, script).await;
        if case.starts_with("trailers") {
            // Not two empty answers alike: the announced trailer reached
            // the client that takes them, and only it.
            assert_eq!(client.matches("x-sum: 42\r\n").count(), 1, "{client}");
            assert!(
                !client.contains("text/evil") && !client.contains("x-late"),
                "{client}"
            );
        }
    }
    let (client, _) = pair
        .through(
            "geolb",
            &[send(format!("GET /big HTTP/1.1\r\nHost: x\r\n\r\n{CLOSE}"))],
        )
        .await;
    assert!(client.len() > 300_000, "the large answer came whole");
}

/// A backend's chunks reach an HTTP/1.1 client as the backend framed
/// them (sizes in its case and padding, all that one read brought in one
/// write), but for a size line with an extension, which goes out made
/// anew without it, and the last chunk, written as before; the same
/// data as through hyper's server, which makes every size line anew.
#[tokio::test]
async fn chunks_pass_as_the_backend_framed_them() {
    let pair = Pair::start().await;
    let script = [send(format!(
        "GET /framed HTTP/1.1\r\nHost: x\r\n\r\n{CLOSE}"
    ))];
    let (geolb, _) = pair.through("geolb", &script).await;
    let (hyper, _) = pair.through("hyper", &script).await;
    let body = |c: &str| c.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    assert_eq!(
        body(&geolb),
        "5\r\nfirst\r\n00c\r\nsecond chunk\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n3\r\nend\r\n0",
        "{geolb}"
    );
    assert_eq!(
        body(&hyper),
        "5\r\nfirst\r\nC\r\nsecond chunk\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n3\r\nend\r\n0",
        "{hyper}"
    );
    assert_eq!(body_of(&geolb), body_of(&hyper));
    // Counted by their data, not their framing: as through hyper's server.
    let text = pair.geolb.metrics().await;
    let out = |listener: &str| {
        let series = format!(
            "geolb_http_bytes_total{{listener=\"{listener}\",pool=\"p\",direction=\"out\"}}"
        );
        support::metric_value(&text, &series)
    };
    assert_eq!(out("geolb"), Some((46 + 23) as f64), "{text}");
    assert_eq!(out("geolb"), out("hyper"));
}

/// A chunked upload's trailer fields reach the backend as through
/// hyper's server: those its `Trailer` field announces (geolb's client
/// sends no others), after the last chunk.
#[tokio::test]
async fn request_trailers_reach_the_backend_as_through_hyper() {
    let pair = Pair::start().await;
    let upload = "POST /up HTTP/1.1\r\nHost: x\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n\
                  4\r\nwiki\r\n0\r\nX-Sum: 7\r\nX-Other: 1\r\n\r\n";
    let script = [send(format!("{upload}{CLOSE}"))];
    let client = pair.same("request trailers", &script).await;
    assert!(client.contains("POST /up with 4 bytes"), "{client}");
    let (_, backend) = pair.through("geolb", &script).await;
    assert!(
        backend[0].ends_with("\r\n\r\n4\r\nwiki\r\n0\r\nx-sum: 7\r\n\r\n"),
        "{}",
        backend[0]
    );
}

#[tokio::test]
async fn a_large_streamed_upload_arrives_the_same() {
    let pair = Pair::start().await;
    let body: Vec<u8> = (0..1u32 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let mut chunked = Vec::new();
    for piece in body.chunks(100_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut with_length = format!(
        "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    with_length.extend_from_slice(&body);
    for script in [
        vec![Send(with_length)],
        vec![
            send(
                "PUT /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            ),
            Send(chunked),
        ],
    ] {
        let (client, backend) = pair.through("geolb", &script).await;
        assert!(client.starts_with("HTTP/1.1 200 OK\r\n"), "{client}");
        let received: usize = backend.iter().map(String::len).sum();
        assert!(
            received > body.len(),
            "the backend got the whole body: {received}"
        );
        // The chunks a backend gets depend on when each read ended, so
        // only the bytes they carry are compared with hyper's.
        let (_, hyper_backend) = pair.through("hyper", &script).await;
        assert_eq!(dechunk(&backend.concat()), dechunk(&hyper_backend.concat()));
    }
}

/// The body bytes of a raw request, its chunk framing removed.
fn dechunk(raw: &str) -> Vec<u8> {
    body_of(raw).0
}

/// The body of the request or answer `raw`: its data (decoded when
/// chunked, whatever sizes its chunks came in: those are the reads that
/// brought it, timing and not either server) and its trailer section;
/// as far as it goes when cut short.
fn body_of(raw: &str) -> (Vec<u8>, Vec<u8>) {
    let raw = raw.as_bytes();
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Default::default();
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let mut rest = &raw[head_end + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return (rest.to_vec(), Vec::new());
    }
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let line = std::str::from_utf8(&rest[..eol]).unwrap_or("");
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16);
        let Ok(size) = size else { break };
        rest = &rest[eol + 2..];
        if size == 0 {
            return (out, rest.to_vec());
        }
        let Some(data) = rest.get(..size) else {
            out.extend_from_slice(rest);
            break;
        };
        out.extend_from_slice(data);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
    out.extend_from_slice(b"[cut]");
    (out, Vec::new())
}

#[tokio::test]
async fn hostile_heads_are_refused_alike() {
    let pair = Pair::start().await;
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let huge_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let cases: Vec<(&str, String)> = vec![
        ("length and chunked", "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("chunked then length", "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into()),
        ("two lengths", "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into()),
        ("two equal lengths", "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".into()),
        ("a list of lengths", "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd".into()),
        ("a list of equal lengths", "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("signed length", "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc".into()),
        ("bad chunk size", "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".into()),
        ("chunk size overflow", "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nabc\r\n0\r\n\r\n".into()),
        ("chunk without its CRLF", "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n".into()),
        ("te not chunked", "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc".into()),
        ("te chunked twice", "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into()),
        ("te on http/1.0", "POST /s HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into()),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n".into()),
        ("bare LF", "GET /lf HTTP/1.1\nHost: x\nConnection: close\n\n".into()),
        ("bare CR", "GET / HTTP/1.1\rHost: x\r\n\r\n".into()),
        ("space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n".into()),
        ("NUL in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".into()),
        ("too many headers", many),
        ("header over the limit", huge_header),
        ("line over the limit", huge_line),
        ("invalid method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("invalid uri", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("control byte in uri", "GET /a\x7f HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("http/2.0 line", "GET / HTTP/2.0\r\nHost: x\r\n\r\n".into()),
        ("http/1.2", "GET / HTTP/1.2\r\nHost: x\r\n\r\n".into()),
        ("two hosts", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n".into()),
        ("dot segment", "GET /a/../b HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("empty lines first", "\r\n\r\nGET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into()),
    ];
    for (case, bytes) in &cases {
        pair.same(case, &[send(bytes)]).await;
    }
}

#[tokio::test]
async fn upgrades_and_http2_are_handed_to_hyper() {
    upgrades_and_http2_go_to_hyper(Pair::start().await).await;
}

/// On one thread, as with several.
#[tokio::test]
async fn upgrades_and_http2_are_handed_to_hyper_on_one_thread() {
    upgrades_and_http2_go_to_hyper(Pair::start_on("[runtime]\nworker_threads = 1\n\n").await).await;
}

async fn upgrades_and_http2_go_to_hyper(pair: Pair) {
    // An upgrade on a connection's first request, after one served by
    // geolb, and pipelined behind one: hyper carries the tunnel each way.
    let ws = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    for script in [
        vec![
            send(format!("GET /first HTTP/1.1\r\nHost: x\r\n\r\n{ws}")),
            Await("101"),
            send("ping"),
            Await("ping"),
            Shut,
        ],
        vec![send(ws), Await("101"), send("ping"), Await("ping"), Shut],
        vec![
            send("GET /first HTTP/1.1\r\nHost: x\r\n\r\n"),
            Await("with 0 bytes"),
            send(ws),
            Await("101"),
            send("ping"),
            Await("ping"),
            Shut,
        ],
    ] {
        let client = pair.same("upgrade", &script).await;
        assert!(
            client.contains("101 Switching Protocols") && client.ends_with("ping"),
            "{client}"
        );
    }
    // HTTP/2 with prior knowledge.
    let mut sender = support::http2_client(pair.geolb.listener("geolb")).await;
    let req = http::Request::get("http://x/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = bounded(LIMIT, "h2 request", sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"GET /h2 with 0 bytes\n");
}

/// A tunnel's bytes are not a head: 200 KB with no `\n` after a
/// WebSocket upgrade come back whole through either server, not cut by the
/// check for a request line longer than 64 KiB.
#[tokio::test]
async fn a_tunnel_carries_long_runs_without_a_newline() {
    let pair = Pair::start().await;
    const SIZE: usize = 200_000;
    for listener in ["geolb", "hyper"] {
        let mut c = TcpStream::connect(pair.geolb.listener(listener))
            .await
            .unwrap();
        c.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        bounded(LIMIT, "101", async {
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "{listener}: closed before 101");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "{listener}: {}",
            String::from_utf8_lossy(&got)
        );
        let (mut r, mut w) = c.into_split();
        let writer = tokio::spawn(async move { w.write_all(&vec![b'x'; SIZE]).await.map(|()| w) });
        let mut echoed = 0;
        bounded(LIMIT, "the echo", async {
            while echoed < SIZE {
                let n = r.read(&mut buf).await.unwrap();
                assert!(n > 0, "{listener}: closed after {echoed} bytes");
                assert!(
                    buf[..n].iter().all(|&b| b == b'x'),
                    "{listener}: {}",
                    String::from_utf8_lossy(&buf[..n.min(200)])
                );
                echoed += n;
            }
        })
        .await;
        assert_eq!(echoed, SIZE, "{listener}");
        let _w = writer.await.unwrap().unwrap();
    }
}

/// A TCP stream whose first write sends only its first two bytes, and
/// the rest after a pause: a client's HTTP/2 preface in two reads.
struct PrefaceInPieces {
    inner: TcpStream,
    first_sent: bool,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncRead for PrefaceInPieces {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PrefaceInPieces {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if !this.first_sent {
            let n = std::task::ready!(
                std::pin::Pin::new(&mut this.inner).poll_write(cx, &buf[..buf.len().min(2)])
            )?;
            this.first_sent = true;
            this.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
            return std::task::Poll::Ready(Ok(n));
        }
        if let Some(pause) = &mut this.pause {
            std::task::ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        std::pin::Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP/2 client whose preface comes in two reads (`PR`, then the
/// rest) is still known for HTTP/2 by either server: after a first request
/// (so that the next one's frames begin a head), a 200 KB upload, 64 KiB
/// and more with no newline, is no request line and arrives whole. hyper's
/// server once took it for one and wrote a 414 into the connection.
#[tokio::test]
async fn an_http2_preface_in_pieces_is_still_http2() {
    let pair = Pair::start().await;
    for listener in ["geolb", "hyper"] {
        let stream = PrefaceInPieces {
            inner: TcpStream::connect(pair.geolb.listener(listener))
                .await
                .unwrap(),
            first_sent: false,
            pause: None,
        };
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        // A first request, answered: the next one's bytes begin a head.
        let first = http::Request::get("http://x/first")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let resp = bounded(LIMIT, "the first answer", sender.send_request(first))
            .await
            .unwrap_or_else(|e| panic!("{listener}: {e:?}"));
        resp.into_body().collect().await.unwrap();
        let req = http::Request::post("http://x/up")
            .body(http_body_util::Full::new(Bytes::from(vec![b'u'; 200_000])))
            .unwrap();
        let resp = bounded(LIMIT, "the upload's answer", sender.send_request(req))
            .await
            .unwrap_or_else(|e| panic!("{listener}: {e:?}"));
        assert_eq!(resp.status(), 200, "{listener}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"POST /up with 200000 bytes\n", "{listener}");
    }
}

/// `count` keep-alive connections to `addr`, each after one answered
/// request, held open; the growth of geolb's RSS per connection.
async fn idle_cost(pid: u32, addr: SocketAddr, count: usize) -> (u64, Vec<TcpStream>) {
    let before = rss_kib(pid) * 1024;
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"with 0 bytes\n") {
            let n = bounded(LIMIT, "the answer", c.read(&mut buf))
                .await
                .unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        held.push(c);
    }
    let grown = (rss_kib(pid) * 1024).saturating_sub(before);
    (grown / count as u64, held)
}

/// An idle keep-alive connection costs geolb's server its task and a few
/// hundred bytes of buffers (`readbuf`: heads are read into buffers of
/// their size), where hyper's keeps an 8-16 KiB read buffer and an 8 KiB
/// write buffer per connection (README, "Memory per idle connection").
#[tokio::test]
async fn an_idle_connection_costs_geolbs_server_less_than_hypers() {
    let pair = Pair::start().await;
    let pid = pair.geolb.pid();
    // Lazy state (backend connections, the scratch buffer) in place first.
    for listener in ["geolb", "hyper"] {
        let _ = idle_cost(pid, pair.geolb.listener(listener), 20).await;
    }
    let (own, _held) = idle_cost(pid, pair.geolb.listener("geolb"), 400).await;
    let (hyper, _held_too) = idle_cost(pid, pair.geolb.listener("hyper"), 400).await;
    eprintln!("measured: RSS per idle connection: geolb's server {own} B, hyper's {hyper} B");
    assert!(
        own < 12 * 1024,
        "geolb's server: {own} B per idle connection"
    );
    assert!(own * 2 < hyper, "geolb's {own} B against hyper's {hyper} B");
}

/// The `Host` lines of the head of `request`, in order, and where the
/// first of them is among the head's fields (0: first).
fn host_lines(request: &str) -> (Vec<&str>, Option<usize>) {
    let head = request.split("\r\n\r\n").next().unwrap_or("");
    let fields: Vec<&str> = head.split("\r\n").skip(1).collect();
    let is_host = |l: &&str| l.to_ascii_lowercase().starts_with("host:");
    let lines = fields.iter().copied().filter(is_host).collect();
    (lines, fields.iter().position(is_host))
}

/// geolb's own server keeps a request's one `Host` out of the header map
/// when it is the first field (`upstream::Added::host`) and writes it
/// first: with header rules (which put the added fields into the map),
/// with the target's authority in its place, and where hyper's HTTP/1
/// client sends the map instead, the backend must get what hyper's server
/// sends, byte for byte.
#[tokio::test]
async fn a_host_kept_out_of_the_map_reaches_the_backend_where_hyper_puts_it() {
    let scripts = [
        (
            "host first",
            "GET /a HTTP/1.1\r\nHost: a.example\r\nX-One: 1\r\nX-Two: 2\r\n\r\n",
        ),
        (
            "host in capitals",
            "GET /b HTTP/1.1\r\nHOST: a.example\r\nX-One: 1\r\n\r\n",
        ),
        ("host alone", "GET /c HTTP/1.1\r\nHost: a.example\r\n\r\n"),
        (
            "host after another field",
            "GET /d HTTP/1.1\r\nX-One: 1\r\nHost: a.example\r\n\r\n",
        ),
        (
            "absolute form",
            "GET http://b.example/e HTTP/1.1\r\nHost: a.example\r\nX-One: 1\r\n\r\n",
        ),
        (
            "http/1.0",
            "GET /f HTTP/1.0\r\nHost: a.example\r\nX-One: 1\r\n\r\n",
        ),
    ];
    let setups = [
        ("default", "", ""),
        (
            "header rules",
            "",
            "request_headers = { set = { \"X-Seen-Host\" = \"{host}\" }, add = { \"X-Via\" = \"rules\" } }\n",
        ),
        ("hyper's client", "http1_client = \"hyper\"\n", ""),
    ];
    for (setup, pool, listener) in setups {
        let pair = Pair::start_with("", pool, listener).await;
        for (case, head) in scripts {
            let script = [send(format!("{head}{CLOSE}"))];
            let client = pair.same(&format!("{setup}: {case}"), &script).await;
            assert!(
                client.starts_with("HTTP/1.1 200 OK\r\n")
                    || client.starts_with("HTTP/1.0 200 OK\r\n"),
                "{setup}: {case}: {client}"
            );
            let (_, backend) = pair.through("geolb", &script).await;
            let (lines, at) = host_lines(&backend[0]);
            let want = if case == "absolute form" {
                "b.example"
            } else {
                "a.example"
            };
            assert_eq!(lines.len(), 1, "{setup}: {case}: {}", backend[0]);
            assert!(
                lines[0].ends_with(&format!(": {want}")),
                "{setup}: {case}: {}",
                backend[0]
            );
            if case != "host after another field" {
                assert_eq!(at, Some(0), "{setup}: {case}: {}", backend[0]);
            }
        }
    }
}

/// A browser's request, its fields in Chrome's order.
const BROWSER: &str = "GET /page HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\
    Cache-Control: max-age=0\r\nsec-ch-ua: \"Chromium\";v=\"120\"\r\nsec-ch-ua-mobile: ?0\r\n\
    sec-ch-ua-platform: \"Linux\"\r\nUpgrade-Insecure-Requests: 1\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: text/html,*/*;q=0.8\r\n\
    Sec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-User: ?1\r\n\
    Sec-Fetch-Dest: document\r\nReferer: https://x/\r\nAccept-Encoding: gzip, br\r\n\
    Accept-Language: en-US,en;q=0.9\r\nCookie: a=1\r\nAccept: again\r\nDNT: 1\r\n\r\n";

/// The head's field lines ordered by name, each name's in the order they
/// came: the order between different names is not significant (RFC 9110
/// section 5.3).
fn by_name(request: &str) -> (String, Vec<String>) {
    let head = request.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("").to_owned();
    let mut fields: Vec<String> = lines.map(str::to_owned).collect();
    fields.sort_by_key(|l| l.split(':').next().unwrap_or("").to_owned());
    (first, fields)
}

#[tokio::test]
async fn fields_passed_unread_reach_the_backend_as_through_hyper() {
    let pair = Pair::start().await;
    let script = [send(format!("{BROWSER}{CLOSE}"))];
    let (hyper_client, hyper_backend) = pair.through("hyper", &script).await;
    let (geolb_client, geolb_backend) = pair.through("geolb", &script).await;
    assert_eq!(geolb_client, hyper_client, "what the client got");
    assert_eq!(geolb_backend.len(), 2);
    for (geolb, hyper) in geolb_backend.iter().zip(&hyper_backend) {
        assert_eq!(by_name(geolb), by_name(hyper));
    }
    // The fields nothing in geolb reads come after the ones it read, in
    // the order they came (a name's together, as in a map), before the
    // ones it adds.
    let head = geolb_backend[0].split("\r\n\r\n").next().unwrap();
    let names: Vec<&str> = head
        .split("\r\n")
        .skip(1)
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            // `Connection` taken out: the map's last name took its place.
            "host",
            "cookie",
            "accept-encoding",
            "cache-control",
            "sec-ch-ua",
            "sec-ch-ua-mobile",
            "sec-ch-ua-platform",
            "upgrade-insecure-requests",
            "user-agent",
            "accept",
            "accept",
            "sec-fetch-site",
            "sec-fetch-mode",
            "sec-fetch-user",
            "sec-fetch-dest",
            "referer",
            "accept-language",
            "dnt",
            "x-request-id",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
        ],
        "{head}"
    );
    // With a body, over HTTP/1.0, and pipelined behind another request:
    // the same fields, name by name, and the same answers.
    let scripts = [
        "POST /form HTTP/1.1\r\nAccept: */*\r\nHost: x\r\nContent-Length: 5\r\n\
         User-Agent: t\r\nConnection: close\r\n\r\nhello"
            .to_owned(),
        "GET /old HTTP/1.0\r\nUser-Agent: t\r\nHost: x\r\nDNT: 1\r\n\r\n".to_owned(),
        format!("GET /1 HTTP/1.1\r\nHost: x\r\nAccept: a\r\n\r\n{BROWSER}{CLOSE}"),
    ];
    for script in scripts {
        let script = [send(script)];
        let (hyper_client, hyper_backend) = pair.through("hyper", &script).await;
        let (geolb_client, geolb_backend) = pair.through("geolb", &script).await;
        assert_eq!(geolb_client, hyper_client);
        assert_eq!(geolb_backend.len(), hyper_backend.len());
        for (geolb, hyper) in geolb_backend.iter().zip(&hyper_backend) {
            assert_eq!(by_name(geolb), by_name(hyper));
            // The body after the head, the same.
            assert_eq!(
                geolb.split_once("\r\n\r\n").map(|(_, b)| b),
                hyper.split_once("\r\n\r\n").map(|(_, b)| b)
            );
        }
    }
    // A Connection that names one of them: stripped, and every field in
    // the map, so in hyper's order byte for byte.
    let named = BROWSER.replace(
        "Connection: keep-alive",
        "Connection: keep-alive, Sec-Fetch-User",
    );
    let script = [send(format!("{named}{CLOSE}"))];
    let client = pair
        .same("a Connection naming a passed field", &script)
        .await;
    assert!(client.starts_with("HTTP/1.1 200 OK\r\n"), "{client}");
    let (_, backend) = pair.through("geolb", &script).await;
    assert!(!backend[0].contains("sec-fetch-user"), "{}", backend[0]);
    assert!(
        backend[0].contains("sec-fetch-mode: navigate\r\n"),
        "{}",
        backend[0]
    );
}

/// A backend that answers each request with its path as the body, but
/// holds the answer to `/held` until the test lets it go (`release`);
/// `came` tells of each `/held` that arrived.
async fn holding_backend() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    Arc<tokio::sync::Semaphore>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (came_tx, came) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let held = release.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (came_tx, held) = (came_tx.clone(), held.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = seen.drain(..end + 4).collect();
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                        if path == "/held" {
                            let _ = came_tx.send(());
                            let Ok(permit) = held.acquire().await else {
                                return;
                            };
                            permit.forget();
                        }
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                            path.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    (addr, came, release)
}

/// Reads from `s` until what came holds `what`, within [`LIMIT`].
async fn read_until<S: AsyncRead + Unpin>(s: &mut S, got: &mut String, what: &str) {
    let mut buf = vec![0u8; 16 * 1024];
    let wait = async {
        while !got.contains(what) {
            match s.read(&mut buf).await {
                Ok(n) if n > 0 => got.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => panic!("the connection ended before {what:?}; got {got:?}"),
            }
        }
    };
    bounded(LIMIT, what, wait).await;
}

/// The client's socket is read while its request's answer is awaited and
/// not again once it is written unless something came (`proxy::read_gate`):
/// a request sent while the one before waits on its backend, one sent
/// right after the answer, and a client that hangs up while its answer
/// is awaited are each seen, on one thread and on several, in cleartext
/// and over TLS.
#[tokio::test]
async fn a_request_sent_at_any_point_of_the_one_before_is_seen() {
    let pki = support::library::Pki::new();
    let leaf = pki.leaf("a.test", &["a.test"]);
    let connector = pki.client(&[b"http/1.1"]);
    for runtime in ["", "[runtime]\nworker_threads = 1\n\n"] {
        let (addr, mut came, release) = holding_backend().await;
        let geolb = Geolb::start(&format!(
            "{runtime}[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{addr}\" }}]\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
             [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\npool = \"p\"\n{}\n",
            support::library::tls_list(&[&leaf])
        ))
        .await;
        let s = TcpStream::connect(geolb.listener("web")).await.unwrap();
        every_request_is_seen(s, &mut came, &release).await;
        let s = support::library::tls_connect(&connector, geolb.listener("tls"), "a.test")
            .await
            .unwrap();
        every_request_is_seen(s, &mut came, &release).await;
        release.close();
    }
}

/// The script of the test above on the connection `s`.
async fn every_request_is_seen<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    came: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    release: &tokio::sync::Semaphore,
) {
    let mut got = String::new();
    for round in 0..3 {
        s.write_all(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        bounded(LIMIT, "the held request reaches the backend", came.recv()).await;
        // Pipelined while the answer before it is awaited.
        s.write_all(format!("GET /during{round} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        release.add_permits(1);
        read_until(&mut s, &mut got, &format!("/during{round}")).await;
        // Sent once both answers are read.
        s.write_all(format!("GET /after{round} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_until(&mut s, &mut got, &format!("/after{round}")).await;
    }
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 9, "{got}");
    let order: Vec<&str> = got
        .split("HTTP/1.1 200 OK")
        .filter_map(|a| a.rsplit("\r\n\r\n").next())
        .filter(|b| !b.is_empty())
        .collect();
    assert_eq!(
        order,
        [
            "/held", "/during0", "/after0", "/held", "/during1", "/after1", "/held", "/during2",
            "/after2"
        ]
    );
    // A client that ends its side while its answer is awaited has gone:
    // its connection is closed without the answer.
    s.write_all(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    bounded(
        LIMIT,
        "the last held request reaches the backend",
        came.recv(),
    )
    .await;
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    bounded(LIMIT, "geolb closes", s.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // Let the held answer go (to nowhere), to the backend's request that
    // waits for it: the next connection's first `/held` then waits again.
    release.add_permits(1);
}

/// Requests made from a seed: the shapes clients and attackers send
/// (framings alone, together and malformed, hop-by-hop fields, names in
/// any case, HTTP/1.0, pipelining, heads cut across writes), through both
/// servers; the backend and the client must get the same bytes from
/// either. `GEOLB_H1_CASES` (default 150) and `GEOLB_H1_SEED` (default
/// fixed) run more or other cases by hand; a failure names its seed, and
/// `GEOLB_H1_SHOW=1` prints both servers' views of each case.
#[tokio::test]
async fn generated_requests_are_served_alike() {
    generated_requests_alike(Pair::start().await, 0x6765_6f6c_6231).await;
}

/// On one thread (the shape the benchmarks run), other seeds.
#[tokio::test]
async fn generated_requests_are_served_alike_on_one_thread() {
    let pair = Pair::start_on("[runtime]\nworker_threads = 1\n\n").await;
    generated_requests_alike(pair, 0x6765_6f6c_6233).await;
}

/// Over TLS (both listeners HTTPS), other seeds: requests come in the
/// records rustls decrypts, not in the socket's reads.
#[tokio::test]
async fn generated_requests_are_served_alike_over_tls() {
    let pair = Pair::start_tls("").await;
    generated_requests_alike(pair, 0x6765_6f6c_6235).await;
}

async fn generated_requests_alike(pair: Pair, first: u64) {
    for seed in support::generated::seeds(150, first) {
        let script = generated_script(&mut fastrand::Rng::with_seed(seed));
        let shown: Vec<String> = script
            .iter()
            .map(|s| match s {
                Send(b) => format!("{:?}", String::from_utf8_lossy(b)),
                _ => String::new(),
            })
            .collect();
        let case = format!("GEOLB_H1_SEED={seed}: {shown:?}");
        // Shown before it runs: a case may fail inside the exchange.
        eprintln!("{case}");
        pair.alike(&case, &script).await;
    }
}

/// A connection's bytes: one to three requests, then one that closes
/// (which a refused or closing request before it leaves unread), sent in
/// one to three writes cut anywhere.
fn generated_script(rng: &mut fastrand::Rng) -> Vec<Step> {
    let mut bytes = Vec::new();
    for _ in 0..rng.usize(1..=3) {
        bytes.extend_from_slice(&generated_request(rng));
    }
    bytes.extend_from_slice(CLOSE.as_bytes());
    let mut cuts: Vec<usize> = (0..rng.usize(0..=2))
        .map(|_| rng.usize(1..bytes.len()))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut steps = Vec::new();
    let mut from = 0;
    for cut in cuts {
        steps.push(Send(bytes[from..cut].to_vec()));
        from = cut;
    }
    steps.push(Send(bytes[from..].to_vec()));
    steps
}

/// One request, now and then malformed in one place. Never one that
/// leaves a server waiting (a body shorter than its length): each case
/// ends when the servers close.
fn generated_request(rng: &mut fastrand::Rng) -> Vec<u8> {
    use support::generated::{cased, pick};
    let eol = if rng.u8(..40) == 0 { "\n" } else { "\r\n" };
    let method = pick(
        rng,
        &[
            "GET", "GET", "POST", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "PURGE",
            "get", "M-SEARCH",
        ],
    );
    let target = pick(
        rng,
        &[
            "/",
            "/a",
            "/a/b?c=d&e",
            "/%41%2f",
            "/chunked",
            "/trailers",
            "/204",
            "/304",
            "/reason",
            "/cookie",
            "/a//b",
            "/q?x=%20y",
            "http://h/abs",
            "http://h:81/abs?q",
            "HTTP://H/upper",
            "https://h/secure",
            "http://u@h/userinfo",
            "/a#fragment",
            "/caf\u{e9}",
            "/a/./b/../c",
            "*",
            "h:443",
        ],
    );
    let version = match rng.u8(..50) {
        0 => "HTTP/1.2",
        1 => "http/1.1",
        2..=7 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let body: Vec<u8> = (0..rng.usize(0..24))
        .map(|i| b"abcdefghij"[(i + rng.usize(..10)) % 10])
        .collect();
    let mut fields: Vec<String> = Vec::new();
    let host = match rng.u8(..40) {
        0 => None,
        1 => Some("x:8080"),
        2 => Some("X"),
        3 => Some("[::1]:80"),
        4 => Some("x."),
        5 => Some("u@x"),
        6 => Some("x:"),
        7 => Some("x:99999"),
        8 => Some(""),
        _ => Some("x"),
    };
    let host_first = rng.u8(..4) != 0;
    // How the body is framed: the length, chunks, both, a coding list.
    let framing = match rng.u8(..20) {
        0..=7 => "none",
        8..=12 => "length",
        13..=16 => "chunked",
        17 => "both",
        18 => "codings",
        _ => "lengths",
    };
    let mut framed_body = Vec::new();
    let chunked_body = |rng: &mut fastrand::Rng, body: &[u8]| -> Vec<u8> {
        let mut out = support::generated::chunks(rng, body);
        out.extend_from_slice(b"0\r\n");
        if rng.u8(..6) == 0 {
            out.extend_from_slice(b"X-Trailer: 1\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    };
    match framing {
        "length" => {
            let value = match rng.u8(..12) {
                0 => format!(" {} ", body.len()),
                1 => format!("0{}", body.len()),
                _ => body.len().to_string(),
            };
            fields.push(format!("{}: {value}", cased(rng, "Content-Length")));
            framed_body = body.clone();
        }
        "lengths" => {
            let other = if rng.bool() {
                body.len()
            } else {
                body.len() + 1
            };
            let len = cased(rng, "Content-Length");
            if rng.bool() {
                fields.push(format!("{len}: {}", body.len()));
                fields.push(format!("{len}: {other}"));
            } else {
                fields.push(format!("{len}: {}, {other}", body.len()));
            }
            framed_body = body.clone();
        }
        "chunked" | "both" | "codings" => {
            let te = cased(rng, "Transfer-Encoding");
            let value = match framing {
                "codings" => pick(rng, &["gzip, chunked", "chunked, gzip", "gzip", "identity"]),
                _ => pick(rng, &["chunked", "chunked", "Chunked", " chunked "]),
            };
            fields.push(format!("{te}: {value}"));
            if framing == "both" {
                let at = rng.usize(..=fields.len());
                fields.insert(at, format!("Content-Length: {}", body.len()));
            }
            framed_body = chunked_body(rng, &body);
        }
        _ => {}
    }
    for _ in 0..rng.usize(0..5) {
        let field = pick(
            rng,
            &[
                "User-Agent: gen/1.0",
                "Accept: */*",
                "X-A: v",
                "X-Tab: a\tb",
                "X-Empty:",
                "X-Spaces:   s  ",
                "Connection: close",
                "Connection: keep-alive",
                "Connection: X-Drop",
                "X-Drop: 1",
                "Keep-Alive: timeout=5",
                "Proxy-Connection: keep-alive",
                "TE: trailers",
                "Cookie: a=b; c=d",
                "X-Forwarded-For: 10.0.0.1",
                "X-Forwarded-Host: evil",
                "Via: 1.1 other",
                "Accept-Encoding: gzip",
                "Expect: 100-continue",
                "X-Obs: caf\u{e9}",
                "Host: y",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAAQAAP__",
                "Trailer: X-Trailer",
            ],
        );
        let (name, value) = field.split_once(':').expect("a field");
        let at = rng.usize(..=fields.len());
        fields.insert(at, format!("{}:{value}", cased(rng, name)));
    }
    if let Some(host) = host {
        let line = format!("{}: {host}", cased(rng, "Host"));
        if host_first {
            fields.insert(0, line);
        } else {
            fields.push(line);
        }
    }
    if rng.u8(..10) == 0 {
        // Malformed in one place, each refused outright by both servers
        // or ending the connection.
        match rng.u8(..6) {
            0 => fields.push("X-Bad : space".into()),
            1 => fields.push("X-Nul: a\0b".into()),
            2 => fields.push("X-Fold: a\r\n b".into()),
            3 => fields.push("X(Bad): name".into()),
            4 if framing == "chunked" => framed_body = b"zz\r\nabc\r\n0\r\n\r\n".to_vec(),
            _ if framing == "chunked" && !body.is_empty() => {
                // A chunk's data longer than its size.
                framed_body =
                    format!("1\r\n{}\r\n0\r\n\r\n", String::from_utf8_lossy(&body)).into_bytes();
            }
            _ => fields.push("X-Cr: a\rb".into()),
        }
    }
    // Empty lines before a request line are skipped (RFC 9112 §2.2).
    let blank = if rng.u8(..30) == 0 { "\r\n" } else { "" };
    let mut out = format!("{blank}{method} {target} {version}{eol}").into_bytes();
    for f in fields {
        out.extend_from_slice(f.as_bytes());
        out.extend_from_slice(eol.as_bytes());
    }
    out.extend_from_slice(eol.as_bytes());
    out.extend_from_slice(&framed_body);
    out
}
