//! geolb's own HTTP/1.1 client (`http1_client = "geolb"`), to backends in
//! cleartext or over TLS, driven in the request's own task: no connection
//! task and no channel between it and the request, as hyper's client has.
//!
//! The request goes out as hyper's client would send it (the same head,
//! the same framing rules, byte for byte: `tests/h1client.rs` checks it);
//! its head and the body bytes already there leave in one `writev`. The
//! response head is parsed with `httparse` more strictly than hyper does:
//! both `Content-Length` and `Transfer-Encoding`, a head over
//! [`MAX_HEAD`] and a 101 to a request that asked for no upgrade are
//! errors (hyper forwards the first framing it picks, reads a head up to
//! 400 KiB, and passes the 101 on). The response body is streamed by
//! `Content-Length`, chunks or the connection's close; once read to its
//! end on a connection that stays open, the connection goes back to its
//! backend's idle list by itself. A body dropped before its end closes it.
//!
//! The request body is written as the response comes: a backend may
//! answer before it read the whole body (a 413), and one that streams
//! its answer while reading is served too. A connection whose request
//! body was not all written is not kept.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::answer_first::AnswerFirst;

pub use super::parsed_value;
use super::unread::{UnreadName, folded_eq};
use super::{BackendRequestBody, young};
use crate::config::DEFAULT_MAX_IDLE;
use crate::readbuf::poll_read_exact_size;
use crate::spares::{KEPT_MAX, Spares};
use crate::stamp::Stamp;
use crate::tcp_io::TcpIo;

/// The largest response head (and chunked trailer section) read: the
/// server side's limit for request heads (`proxy::activity::MAX_HEAD`).
pub const MAX_HEAD: usize = 64 * 1024;
/// Header fields a head may carry: hyper's default, on the server side too.
const MAX_HEADERS: usize = 100;
/// Read buffer space asked for at a time.
const READ_SIZE: usize = 16 * 1024;
/// The most one read of a response body asks for. Each read and each write
/// costs the kernel a pass through loopback's TCP; a 64 KiB answer took
/// six of each in 16 KiB reads, against nginx's two writes (by
/// `PERF_SYSCALLS=1 WORKLOADS=64k benches/http.sh`). A body of known
/// length asks for what is left of it; one of unknown length doubles its
/// reads while they come back full.
const BODY_READ_MAX: usize = 64 * 1024;
/// Request body bytes queued before they are written out.
const WRITE_QUEUE: usize = 64 * 1024;
/// A chunk-size line with its extensions (hyper allows 16 KiB of
/// extensions per body).
const MAX_CHUNK_LINE: usize = 16 * 1024;

/// The idle connections of one backend, shared with the responses that
/// will put theirs back. Streams only: a kept stream holds no handle to
/// its list, so the list goes away with its backend.
pub(super) type Home = Arc<KeptList>;

/// A backend's idle connections, newest last, and how many it keeps.
pub struct KeptList {
    conns: Mutex<Vec<(Kept, Stamp)>>,
    /// The pools' `max_idle`: a connection put back past it is closed.
    pub(super) max: AtomicUsize,
}

impl Default for KeptList {
    fn default() -> Self {
        KeptList {
            conns: Mutex::default(),
            max: AtomicUsize::new(DEFAULT_MAX_IDLE as usize),
        }
    }
}

impl KeptList {
    pub(super) fn len(&self) -> usize {
        crate::locked(&self.conns).len()
    }

    /// Keeps at most `max` from now on, and closes all but the `max`
    /// newest now.
    pub(super) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
        super::keep_newest(&mut crate::locked(&self.conns), max);
    }

    /// Closes those idle too long to be taken; whether any are left.
    pub(super) fn close_expired(&self, now: Stamp) -> bool {
        let mut conns = crate::locked(&self.conns);
        conns.retain(|(_, since)| young(*since, now));
        !conns.is_empty()
    }
}

/// A connection between requests, with its read buffer: no larger than
/// the heads it has read (`readbuf`), it takes the next response's head.
pub struct Kept(Box<Link>);

/// A connection's socket and read buffer, boxed once, when it is opened:
/// a response holds a pointer to them rather than their 72 bytes, and
/// its moves (six a request, from here to the client's writer) copy
/// 240 and 384 bytes where they copied 304 and 448 (16,833 -> 16,441
/// instructions a request, `benches/instructions.sh`).
struct Link {
    stream: Stream,
    buf: BytesMut,
}

impl Kept {
    pub(super) fn new(stream: Stream) -> Kept {
        Kept(Box::new(Link {
            stream,
            buf: BytesMut::new(),
        }))
    }
}

/// A backend connection's bytes: TCP, or TLS over it (a pool with `tls`).
pub(super) enum Stream {
    Plain(TcpIo),
    /// Boxed: rustls's state is KiBs, which a plain connection's every
    /// move would carry. [`AnswerFirst`] under rustls, as for hyper's
    /// client: rustls writes while it reads too (what it owes the peer),
    /// and such a write's reset came out of the read that was to find a
    /// backend's early answer.
    Tls(Box<TlsStream>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => s.poll_recv(cx, buf),
            Stream::Tls(s) => tls_read(s, cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => s.poll_writev(cx, bufs),
            Stream::Tls(s) => tls_write(s, cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(s) => tls_flush(s, cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

// The TLS arms out of line: inlined, rustls's code took the plain arms'
// callers past their inlining limits (126 instructions a request more on
// cleartext, `benches/instructions.sh`).
type TlsStream = tokio_rustls::client::TlsStream<AnswerFirst<TcpIo>>;

#[inline(never)]
fn tls_read(
    s: &mut TlsStream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    Pin::new(s).poll_read(cx, buf)
}

#[inline(never)]
fn tls_write(
    s: &mut TlsStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    Pin::new(s).poll_write_vectored(cx, bufs)
}

#[inline(never)]
fn tls_flush(s: &mut TlsStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    Pin::new(s).poll_flush(cx)
}

/// Why a request through the own client failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the backend closed the connection before answering")]
    Closed,
    /// Reading or writing failed before any byte of the response came.
    #[error("the backend connection failed before answering")]
    Reset(#[source] io::Error),
    #[error("the backend connection failed")]
    Io(#[source] io::Error),
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the response head has more than {MAX_HEADERS} fields")]
    TooManyHeaders,
    #[error("the response head is malformed: {0}")]
    Parse(httparse::Error),
    #[error("the response status is not a valid code")]
    Status,
    #[error("the response has both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("the response's Content-Length is invalid or given with differing values")]
    BadLength,
    #[error("an HTTP/1.0 response with Transfer-Encoding")]
    Http10Chunked,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedUpgrade,
    #[error("a malformed chunk in the response body")]
    BadChunk,
    #[error("the backend closed the connection before the end of the response body")]
    Incomplete,
    #[error("the request body failed")]
    RequestBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the request body does not match its Content-Length")]
    RequestLength,
}

impl Error {
    /// The backend went away before a byte of its response: cleanly or
    /// reset (what the proxy may retry elsewhere).
    pub fn closed_without_answer(&self) -> bool {
        match self {
            Error::Closed => true,
            Error::Reset(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// A failed send, with the request when none of it was written (the
/// connection was found closed first): it may go out on another.
pub struct SendError {
    pub error: Error,
    pub request: Option<Request<BackendRequestBody>>,
    /// The head of a bodiless request that was written and met a close
    /// before any answer: the caller may send it again without having kept
    /// a copy of its own.
    pub sent: Option<http::request::Parts>,
}

/// The newest kept connection that still looks open; stale ones met on
/// the way are closed.
pub(super) fn take(home: &Home, now: Stamp) -> Option<Kept> {
    let mut kept = crate::locked(&home.conns);
    while let Some((mut conn, since)) = kept.pop() {
        if young(since, now) && still_open(&mut conn.0.stream) {
            return Some(conn);
        }
    }
    None
}

/// No byte and no close from the backend since the connection went
/// idle. Costs no system call unless the socket was reported readable.
fn still_open(stream: &mut Stream) -> bool {
    match stream {
        Stream::Plain(tcp) => quiet(tcp.get_ref()),
        Stream::Tls(tls) => tls_still_open(tls),
    }
}

fn quiet(tcp: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[inline(never)]
fn tls_still_open(tls: &mut TlsStream) -> bool {
    let (io, session) = tls.get_mut();
    // What rustls decrypted past the last response is stray too: the
    // next response would begin with it.
    let mut probe = [0u8; 1];
    matches!(
        io::Read::read(&mut session.reader(), &mut probe),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock
    ) && quiet(io.get_ref().get_ref())
}

fn put(home: &Home, conn: Kept) {
    let max = home.max.load(Ordering::Relaxed);
    let mut kept = crate::locked(&home.conns);
    if kept.len() < max {
        kept.push((conn, Stamp::now()));
    }
}

/// Sends `req` on `stream` and reads the response head; the body streams
/// from the returned response. `home`: where the connection goes back.
///
/// Not an async fn: one keeps its arguments' places in its future for its
/// whole life, beside the parts made of them (the request twice, the
/// connection twice). The head is written into its buffer here, and the
/// future holds only what the exchange needs.
///
/// `wrap` turns the response's body into the caller's body type: the
/// response is built once, in that type, rather than built and then
/// remade (each remaking copies it twice). With `as_read`, the response's
/// fields may come as [`ReadFields`] in its body, its map empty.
///
/// `wrap` is a type of its own (a variant's constructor), not a `fn`
/// pointer: called through a pointer, it could not be inlined, and the
/// body was copied into the caller's type (16,860 -> 16,780 instructions
/// a request).
#[allow(clippy::too_many_arguments)]
pub fn send<'a, B, E: From<SendError>, W: FnOnce(ResponseBody) -> B>(
    kept: Kept,
    home: Home,
    pending: &mut Option<Request<BackendRequestBody>>,
    added: &super::Added,
    as_read: bool,
    wrap: W,
    got: &'a mut Option<Response<B>>,
) -> impl Future<Output = Result<(), E>> + use<'a, B, E, W> {
    let Some(req) = pending.take() else {
        unreachable!("a request is sent from where it is kept")
    };
    let (mut parts, body) = req.into_parts();
    let end_stream = body.is_end_stream();
    let (encoder, framing) = set_length(&mut parts, &body);
    let head = HEADS.with_borrow_mut(|heads| {
        crate::arena::cut(heads, HEADS_CHUNK, HEAD_ROOM, |h| {
            write_head(&parts, added, framing, h)
        })
    });
    // On the future's state until the response comes; boxed into the
    // connection only if the request is still being written then (rare).
    // Made in its Option: a writer bound first would keep a second place
    // in the future (a borrowed local stays for its whole scope).
    let mut writer = Some(Writer {
        body: (!end_stream).then_some(body),
        encoder,
        queue: SmallVec::new(),
        queued: 0,
        written: 0,
        finished: end_stream,
        taken: false,
    });
    if let Some(w) = writer.as_mut() {
        w.push(head);
    }
    let mut conn = Conn {
        link: kept.0,
        grown: false,
        writer: None,
        complete: false,
        home,
    };
    async move {
        // A write that failed: its error, and the body if none of it was
        // taken (nothing sent: the request can go out on another connection).
        let mut write_failed: Option<(Error, Option<BackendRequestBody>)> = None;
        let mut unsent = false;
        let parsed = std::future::poll_fn(|cx| {
            if let Some(w) = writer.as_mut() {
                match w.poll_write(cx, &mut conn.link.stream) {
                    Poll::Ready(Ok(())) => {
                        writer = None;
                        conn.complete = true;
                    }
                    Poll::Pending => {}
                    Poll::Ready(Err(e @ (Error::RequestBody(_) | Error::RequestLength))) => {
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Err(e)) => {
                        // The backend may have answered and closed (a 413):
                        // its answer is still read.
                        let mut w = writer.take().expect("writing");
                        unsent = w.written == 0 && !w.taken;
                        write_failed = Some((e, w.body.take().filter(|_| unsent)));
                    }
                }
            }
            // The request's header map, written out, takes the response's
            // fields (one allocation and one free fewer per request).
            match ready!(conn.poll_head(cx, &parts.method, &mut parts.headers, as_read)) {
                Ok(head) => Poll::Ready(Ok(head)),
                Err(Error::Closed | Error::Reset(_)) if write_failed.is_some() => {
                    Poll::Ready(Err(Error::Closed))
                }
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await;
        match (parsed, write_failed) {
            (Ok(head), _) if !first_chunk_ok(&head, &conn.link.buf) => Err(SendError {
                error: Error::BadChunk,
                request: None,
                sent: None,
            }
            .into()),
            (Ok(head), _) => {
                conn.writer = writer.map(Box::new);
                // What `parse_head` left in the request's place (its map
                // went to the response): never given room.
                super::drop_headers(parts.headers);
                respond(conn, head, wrap, got);
                Ok(())
            }
            (Err(Error::Closed), Some((error, body))) if unsent => {
                let body =
                    body.unwrap_or_else(|| http_body_util::Either::Right(Default::default()));
                Err(SendError {
                    error,
                    request: Some(Request::from_parts(parts, body)),
                    sent: None,
                }
                .into())
            }
            (Err(Error::Closed), Some((error, _))) | (Err(error), _) => Err(SendError {
                // Only such a close leaves the head whole (see poll_head).
                sent: (end_stream && error.closed_without_answer()).then_some(parts),
                error,
                request: None,
            }
            .into()),
        }
    }
}

/// hyper's client framing for a request (`Client::set_length` in hyper's
/// `proto::h1::role`), kept exactly so that backends see the same bytes
/// from either client: `Content-Length` the caller set wins, else
/// `Transfer-Encoding` (made to end in chunked), else a known length is
/// stated, else chunked, except for GET, HEAD and CONNECT, sent bodiless.
///
/// A framing field the request lacked comes back rather than going into
/// the map: hyper's client appends it to the map, after the fields geolb
/// added there, so it is written last. The added fields then stay out of
/// the map for a request with a body too (four inserts and their drops
/// were 1,400 instructions of a 1 KiB POST's 21,900).
fn set_length(
    parts: &mut http::request::Parts,
    body: &BackendRequestBody,
) -> (Encoder, Option<AddedFraming>) {
    let headers = &mut parts.headers;
    if body.is_end_stream() {
        if super::has_field(headers, &header::TRANSFER_ENCODING) {
            headers.remove(header::TRANSFER_ENCODING);
        }
        return (Encoder::Length(0), None);
    }
    let known = body.size_hint().exact();
    // Found by scanning a small map rather than by hash, as `has_field`
    // does (a 1 KiB POST's map holds `Host` and `Content-Length`).
    let existing = content_length(super::field_values(headers, &header::CONTENT_LENGTH));
    let has_te = super::has_field(headers, &header::TRANSFER_ENCODING);
    if parts.version == Version::HTTP_10 {
        if has_te {
            headers.remove(header::TRANSFER_ENCODING);
        }
        return match (existing, known) {
            (Ok(Some(len)), _) => (Encoder::Length(len), None),
            (_, Some(len)) => (Encoder::Length(len), stated_length(headers, existing, len)),
            _ => (Encoder::Length(0), None),
        };
    }
    let framing = if has_te {
        if let Entry::Occupied(mut te) = headers.entry(header::TRANSFER_ENCODING) {
            let last = te.iter_mut().next_back().expect("occupied");
            if !ends_in_chunked(last) {
                let mut with = last.as_bytes().to_vec();
                with.extend_from_slice(b", chunked");
                if let Ok(v) = HeaderValue::from_bytes(&with) {
                    *last = v;
                }
            }
        }
        None
    } else {
        match (existing, known) {
            (Ok(Some(len)), _) => {
                return (Encoder::Length(len), None);
            }
            (_, Some(len)) => {
                return (Encoder::Length(len), stated_length(headers, existing, len));
            }
            _ if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) => {
                return (Encoder::Length(0), None);
            }
            _ => Some(AddedFraming::Chunked),
        }
    };
    // Chunked from here on: a Content-Length would contradict it.
    if existing != Ok(None) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let trailers = if super::has_field(headers, &header::TRAILER) {
        announced_trailers(headers)
    } else {
        Vec::new()
    };
    (Encoder::Chunked(trailers), framing)
}

/// The framing field [`set_length`] adds to a request that lacked one.
enum AddedFraming {
    Length(u64),
    Chunked,
}

/// `Content-Length: len`, in place of one the map holds (`existing`, what
/// its values said: one that did not parse, as hyper's `insert` replaces
/// it where it stands), else to be written last.
fn stated_length(
    headers: &mut HeaderMap,
    existing: Result<Option<u64>, ()>,
    len: u64,
) -> Option<AddedFraming> {
    if existing != Ok(None) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        return None;
    }
    Some(AddedFraming::Length(len))
}

/// The field names a message's `Trailer` header announces (hyper's
/// reading: a list per line, names that do not parse skipped).
pub fn announced_trailers(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
        .collect()
}

fn ends_in_chunked(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("chunked"))
}

/// Every `Content-Length` value (comma-separated lists too): `Ok(None)`
/// when there is none, an error unless all are the same number (hyper's
/// `content_length_parse_all`; the HTTP/2 client reads answers with it
/// too).
pub(super) fn content_length<'a>(
    mut values: impl Iterator<Item = &'a HeaderValue>,
) -> Result<Option<u64>, ()> {
    values.try_fold(None, |so_far, v| add_length(Ok(so_far), v.as_bytes()))
}

/// The length so far with one more `Content-Length` field: all must say
/// the same.
fn add_length(so_far: Result<Option<u64>, ()>, value: &[u8]) -> Result<Option<u64>, ()> {
    let n = content_length_value(value).ok_or(())?;
    match so_far? {
        Some(l) if l != n => Err(()),
        _ => Ok(Some(n)),
    }
}

/// Also what `proxy::headers` writes and replaces (statics: it hands out
/// `&'static` names).
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
// Made at compile time: `from_static` called at run time checks its
// name again each call.
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// A field's name as `HeaderName::from_bytes` makes it, the names nearly
/// every message carries matched whole first, in the two spellings
/// servers and clients send (the names geolb may pass unread, in any
/// case: `UnreadName::of`): `from_bytes` lower-cases each byte through
/// a table and then looks the name up (117 instructions a name, by
/// `benches/instructions.sh`), and copies a name it does not know into a
/// new allocation. A browser's request brings seven such names
/// (`Sec-Fetch-*`, `sec-ch-ua*`): they are matched to names made once.
pub fn field_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    match known_name(raw) {
        Some(name) => Ok(name),
        None => HeaderName::from_bytes(raw),
    }
}

fn known_name(raw: &[u8]) -> Option<HeaderName> {
    Some(match raw {
        b"Host" | b"host" => header::HOST,
        b"Date" | b"date" => header::DATE,
        b"Server" | b"server" => header::SERVER,
        b"Connection" | b"connection" => header::CONNECTION,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"ETag" | b"etag" => header::ETAG,
        b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
        b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
        b"Cookie" | b"cookie" => header::COOKIE,
        b"Authorization" | b"authorization" => header::AUTHORIZATION,
        b"Content-Encoding" | b"content-encoding" => header::CONTENT_ENCODING,
        b"Vary" | b"vary" => header::VARY,
        b"Expires" | b"expires" => header::EXPIRES,
        b"Set-Cookie" | b"set-cookie" => header::SET_COOKIE,
        b"Location" | b"location" => header::LOCATION,
        b"X-Forwarded-For" | b"x-forwarded-for" => X_FORWARDED_FOR.clone(),
        b"X-Forwarded-Proto" | b"x-forwarded-proto" => X_FORWARDED_PROTO.clone(),
        b"X-Real-IP" | b"x-real-ip" => X_REAL_IP,
        // The names a browser's request brings that geolb may pass unread
        // (`Accept`, `Sec-Fetch-*`, ...), one list for both uses.
        _ => return UnreadName::of(raw).map(|u| u.header_name().clone()),
    })
}

/// One `Content-Length` line, as hyper's `content_length_parse` reads it:
/// digits only, at most 19 of them; a list of equal values (`5, 5`) is
/// one. Read as bytes: a plain number needs no split and no check for text.
pub fn content_length_value(value: &[u8]) -> Option<u64> {
    // A plain number, as nearly every message sends it: no list to split
    // and trim (161 instructions for `1024` that way).
    if (1..=19).contains(&value.len()) && value.iter().all(u8::is_ascii_digit) {
        return Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
    }
    let mut result = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match result {
            Some(prev) if prev != n => return None,
            _ => result = Some(n),
        }
    }
    result
}

thread_local! {
    /// Where request heads are written, cut as `crate::arena` cuts them
    /// (each in a buffer of its own cost two allocations and two frees a
    /// request, 300 instructions by `benches/instructions.sh`).
    static HEADS: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// A new chunk of [`HEADS`]: small, since a head held by a backend that
/// does not read keeps its whole chunk.
const HEADS_CHUNK: usize = 4096;

/// Below this room a new chunk is taken rather than a head started that
/// would likely outgrow it (a longer head still grows it: `BytesMut`).
const HEAD_ROOM: usize = 512;

fn write_head(
    parts: &http::request::Parts,
    added: &super::Added,
    framing: Option<AddedFraming>,
    dst: &mut impl BufMut,
) {
    dst.put_slice(parts.method.as_str().as_bytes());
    dst.put_u8(b' ');
    match parts.uri.path_and_query() {
        Some(target) if parts.uri.authority().is_none() => {
            dst.put_slice(target.as_str().as_bytes())
        }
        _ => dst.put_slice(parts.uri.to_string().as_bytes()),
    }
    dst.put_slice(match parts.version {
        Version::HTTP_10 => b" HTTP/1.0\r\n",
        _ => b" HTTP/1.1\r\n",
    });
    added.write_host(dst);
    write_fields(&parts.headers, dst);
    added.write(dst);
    match framing {
        None => {}
        Some(AddedFraming::Length(len)) => {
            write_fields([(&header::CONTENT_LENGTH, &HeaderValue::from(len))], dst);
        }
        Some(AddedFraming::Chunked) => write_fields(
            [(
                &header::TRANSFER_ENCODING,
                &HeaderValue::from_static("chunked"),
            )],
            dst,
        ),
    }
    dst.put_slice(b"\r\n");
}

pub(super) fn write_fields<'a>(
    fields: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    dst: &mut impl BufMut,
) {
    for (name, value) in fields {
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
}

/// How the request body is framed.
enum Encoder {
    Length(u64),
    /// With the trailer fields the request's `Trailer` header allows.
    Chunked(Vec<HeaderName>),
}

/// The request on its way out: queued bytes and the body still to come.
struct Writer {
    body: Option<BackendRequestBody>,
    encoder: Encoder,
    queue: SmallVec<[Bytes; 4]>,
    queued: usize,
    /// Bytes written so far.
    written: u64,
    /// The body's end is queued.
    finished: bool,
    /// A frame of the body was taken.
    taken: bool,
}

impl Writer {
    fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.queued += bytes.len();
            self.queue.push(bytes);
        }
    }

    /// Moves the request on: takes what the body has ready (so that the
    /// head and the first bytes share a write), then writes the queue.
    /// Ready once the whole request is written.
    fn poll_write(&mut self, cx: &mut Context<'_>, stream: &mut Stream) -> Poll<Result<(), Error>> {
        loop {
            if !self.finished && self.queued < WRITE_QUEUE {
                let body = self.body.as_mut().expect("a body until finished");
                if let Poll::Ready(frame) = Pin::new(body).poll_frame(cx) {
                    self.taken = true;
                    self.encode(frame)?;
                    continue;
                }
            }
            if self.queue.is_empty() {
                // What TLS holds of the queue goes out too (TCP holds none).
                if let Err(e) = ready!(Pin::new(&mut *stream).poll_flush(cx)) {
                    return Poll::Ready(Err(Error::Reset(e)));
                }
                return if self.finished {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            let n = {
                let slices: SmallVec<[IoSlice<'_>; 8]> =
                    self.queue.iter().take(8).map(|b| IoSlice::new(b)).collect();
                match ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices)) {
                    Ok(0) => {
                        return Poll::Ready(Err(Error::Reset(io::ErrorKind::WriteZero.into())));
                    }
                    Ok(n) => n,
                    // No byte of the response is in yet when writing
                    // fails (later failures are only logged): hyper's
                    // write errors are retried the same way.
                    Err(e) => return Poll::Ready(Err(Error::Reset(e))),
                }
            };
            self.written += n as u64;
            self.queued -= n;
            let mut left = n;
            while left > 0 {
                let first = &mut self.queue[0];
                if first.len() <= left {
                    left -= first.len();
                    self.queue.remove(0);
                } else {
                    first.advance(left);
                    left = 0;
                }
            }
        }
    }

    fn encode(&mut self, frame: Option<Result<Frame<Bytes>, BoxError>>) -> Result<(), Error> {
        let frame = match frame {
            None => {
                self.finished = true;
                self.body = None;
                match self.encoder {
                    Encoder::Length(0) => {}
                    Encoder::Length(_) => return Err(Error::RequestLength),
                    Encoder::Chunked(_) => self.push(Bytes::from_static(b"0\r\n\r\n")),
                }
                return Ok(());
            }
            Some(Err(e)) => return Err(Error::RequestBody(e)),
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Ok(trailers), Encoder::Chunked(allowed)) =
                    (frame.into_trailers(), &self.encoder)
                {
                    let mut fields = HeaderMap::new();
                    for (name, value) in &trailers {
                        if allowed.contains(name) && may_be_trailer(name) {
                            fields.append(name, value.clone());
                        }
                    }
                    if !fields.is_empty() {
                        let mut out = b"0\r\n".to_vec();
                        write_fields(&fields, &mut out);
                        out.extend_from_slice(b"\r\n");
                        self.push(Bytes::from(out));
                        self.finished = true;
                        self.body = None;
                    }
                }
                return Ok(());
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.encoder {
            Encoder::Length(left) => {
                let len = data.len() as u64;
                if len > *left {
                    return Err(Error::RequestLength);
                }
                *left -= len;
                self.push(data);
            }
            Encoder::Chunked(_) => {
                self.push(Bytes::from(format!("{:X}\r\n", data.len())));
                self.push(data);
                self.push(Bytes::from_static(b"\r\n"));
            }
        }
        Ok(())
    }
}

/// Whether a trailer may carry the field: not one of hyper's list of
/// fields that must come in the head (`is_valid_trailer_field`).
pub fn may_be_trailer(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A backend connection in use.
struct Conn {
    /// The socket, and what was read from it and not yet consumed.
    link: Box<Link>,
    /// The request, until it is all written or writing it failed.
    writer: Option<Box<Writer>>,
    /// The whole request was written.
    complete: bool,
    /// A body was read into `buf`, which is then body-sized.
    grown: bool,
    home: Home,
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    /// Empty when the fields are in `read`.
    headers: HeaderMap,
    read: Option<Box<ReadFields>>,
    reason: Option<hyper::ext::ReasonPhrase>,
    framing: Framing,
    keep_alive: bool,
}

impl Conn {
    /// Reads until a final response head is in; 1xx heads other than
    /// 101 are skipped, as hyper does.
    /// The final head's fields go into `spare`'s allocation; it is taken
    /// only by a head that parses, or by one that fails to (never on a
    /// close before an answer, which may send the request again).
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
        spare: &mut HeaderMap,
        as_read: bool,
    ) -> Poll<Result<Head, Error>> {
        let mut seen_any = false;
        loop {
            if !self.link.buf.is_empty() {
                seen_any = true;
                match parse_head(&mut self.link.buf, method, spare, as_read)? {
                    Some(Some(head)) => return Poll::Ready(Ok(head)),
                    // A 1xx skipped: what follows may be in already.
                    Some(None) => continue,
                    None if self.link.buf.len() >= MAX_HEAD => {
                        return Poll::Ready(Err(Error::HeadTooLarge));
                    }
                    None => {}
                }
            }
            // The head (and a small body with it) in a buffer of its size:
            // a connection waiting for its response holds no 16 KiB.
            match ready!(poll_read_exact_size(
                Pin::new(&mut self.link.stream),
                cx,
                &mut self.link.buf,
                READ_SIZE
            )) {
                Ok(0) if seen_any => return Poll::Ready(Err(Error::Incomplete)),
                Ok(0) => return Poll::Ready(Err(Error::Closed)),
                Ok(_) => {}
                Err(e) if seen_any => return Poll::Ready(Err(Error::Io(e))),
                Err(e) => return Poll::Ready(Err(Error::Reset(e))),
            }
        }
    }

    /// Keeps the request going while the response is read; a failure
    /// ends the writing, and the connection is then not kept.
    fn drive_writer(&mut self, cx: &mut Context<'_>) {
        if let Some(w) = self.writer.as_mut() {
            match w.poll_write(cx, &mut self.link.stream) {
                Poll::Ready(Ok(())) => {
                    self.writer = None;
                    self.complete = true;
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "request body not all sent to the backend");
                    self.writer = None;
                }
                Poll::Pending => {}
            }
        }
    }
}

/// `Ok(None)`: not all in yet; `Ok(Some(None))`: a 1xx, skipped.
#[allow(clippy::type_complexity)]
fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    spare: &mut HeaderMap,
    as_read: bool,
) -> Result<Option<Option<Head>>, Error> {
    // Left uninitialised for httparse to fill (as the client's head is):
    // `[EMPTY_HEADER; 100]` was a loop storing 3,200 bytes on every
    // response, 17,590 -> 17,246 instructions a request without it
    // (`benches/instructions.sh`).
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::TooManyHeaders),
        Err(e) => return Err(Error::Parse(e)),
    };
    if len > MAX_HEAD {
        return Err(Error::HeadTooLarge);
    }
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Error::Status)?;
    let version = if resp.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let reason = resp
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    // Pushed, not collected, and read in place below: the list was copied
    // whole out of `collect` and again into its iterator. Offsets in a
    // head of at most `MAX_HEAD` bytes fit `u32`, and halve those copies.
    let mut spans: SmallVec<[[u32; 4]; 24]> = SmallVec::new();
    for h in resp.headers.iter() {
        let (n, v) = (at(h.name.as_bytes()), at(h.value));
        spans.push([n, n + h.name.len(), v, v + h.value.len()].map(|i| i as u32));
    }
    let raw = buf.split_to(len).freeze();
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Some(None));
    }
    let fields = if as_read {
        read_fields(&raw, &spans, version)?
    } else {
        None
    };
    // Empty, or to be filled: its allocation is the request's, which goes
    // on to the proxy's next request.
    let mut headers = std::mem::take(spare);
    super::clear_headers(&mut headers);
    let (read, mut keep_alive, lengths) = match fields {
        Some((read, keep_alive, lengths)) => (Some(read), keep_alive, lengths),
        None => {
            let (keep_alive, lengths) = map_fields(&raw, &spans, version, &mut headers)?;
            (None, keep_alive, lengths)
        }
    };
    let framing = framing(status, version, method, lengths)?;
    // Nor is an HTTP/1.0 backend's connection used again when it offers
    // to keep it (`Connection: keep-alive`): a later request may carry a
    // chunked body, which a client must not send to a server it knows to
    // speak HTTP/1.0 (RFC 9112 §6.1; one that read it as no body would
    // take its chunks for the next request). hyper's client spoke HTTP/1.0
    // on such a connection instead, and sent such a body as none.
    if framing == Framing::Close || version == Version::HTTP_10 {
        keep_alive = false;
    }
    Ok(Some(Some(Head {
        status,
        version,
        headers,
        read,
        reason,
        framing,
        keep_alive,
    })))
}

/// The head's fields (at `spans` in `raw`) into `headers`; whether the
/// connection stays open and what the fields say of the body's length.
fn map_fields(
    raw: &Bytes,
    spans: &[[u32; 4]],
    version: Version,
    headers: &mut HeaderMap,
) -> Result<(bool, Lengths), Error> {
    headers.reserve(spans.len());
    let mut alive = Alive::of(version);
    // Seen as the fields go by: two lookups in the map after cost more.
    let mut lengths = Lengths {
        length: Ok(None),
        last_coding: None,
    };
    // Hop-by-hop fields that the proxy would strip at once are not built
    // (most backends send `Connection: keep-alive`); a `Connection` naming
    // other fields stays for the stripping to read. (No 101 gets here: this
    // client sends no upgrade, and refuses one.)
    for &[n0, n1, v0, v1] in spans {
        let [n0, n1, v0, v1] = [n0, n1, v0, v1].map(|i| i as usize);
        let raw_name = &raw[n0..n1];
        if raw_name.eq_ignore_ascii_case(b"keep-alive")
            || raw_name.eq_ignore_ascii_case(b"proxy-connection")
        {
            continue;
        }
        let name = field_name(raw_name).map_err(|_| Error::Parse(httparse::Error::HeaderName))?;
        let value = parsed_value(raw.slice(v0..v1));
        if name == header::CONNECTION {
            if !alive.read(value.as_bytes()) {
                continue;
            }
        } else if name == header::CONTENT_LENGTH {
            lengths.length = add_length(lengths.length, value.as_bytes());
        } else if name == header::TRANSFER_ENCODING {
            lengths.last_coding = Some(value.clone());
        }
        headers.append(name, value);
    }
    Ok((alive.keep_alive, lengths))
}

/// Whether a response's connection stays open, as its `Connection`
/// fields go by.
struct Alive {
    keep_alive: bool,
    close: bool,
}

impl Alive {
    fn of(version: Version) -> Alive {
        Alive {
            keep_alive: version == Version::HTTP_11,
            close: false,
        }
    }

    /// Reads one `Connection` value; true if it names fields the next hop
    /// must not see (the field is then kept for the stripping to read).
    fn read(&mut self, value: &[u8]) -> bool {
        // What nearly every backend sends, decided without a split.
        if folded_eq(value, b"keep-alive") {
            self.keep_alive |= !self.close;
            return false;
        }
        if self.close || token_in(value, "close") {
            self.close = true;
            self.keep_alive = false;
        } else if !self.keep_alive {
            self.keep_alive = token_in(value, "keep-alive");
        }
        !names_no_field(value)
    }
}

/// A response's fields as the backend sent them, for geolb's own HTTP/1
/// writer to copy out with their names lower-cased, in place of a header
/// map: building one looks each name up, hashes and inserts it, checks
/// each value again and frees it all after (the copy took 21,192 to
/// 20,606 instructions a request, by `benches/instructions.sh`). `send`'s
/// caller asks for it where nothing reads the answer's fields on its way
/// but the stripping of hop-by-hop fields, which [`ReadFields::remove`]
/// does as a map's `remove` does: the fields go out in the order of
/// hyper's client's map once stripped (this client's own map leaves out
/// `Connection`, `Keep-Alive` and `Proxy-Connection` as it reads them, so
/// its order differs where one came before other fields).
#[derive(Default)]
pub struct ReadFields {
    head: Bytes,
    /// A name's fields side by side, in the order a header map would give
    /// them: as they came until one is removed.
    fields: SmallVec<[ReadField; 12]>,
    /// The kinds among them, by [`FieldKind::bit`]: most heads carry none
    /// of those looked for.
    present: u16,
}

#[derive(Clone, Copy)]
struct ReadField {
    /// Offsets in the head: it is at most `u16::MAX` bytes long.
    name: [u16; 2],
    value: [u16; 2],
    kind: FieldKind,
    /// Of the same name as the field before.
    same_name: bool,
    /// Sent as it is written out, `name: value` and CRLF: its line is
    /// copied whole (one copy for four).
    as_written: bool,
}

/// The fields a writer of [`ReadFields`] or the proxy's stripping of
/// hop-by-hop fields must tell apart.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FieldKind {
    ContentLength,
    Date,
    Connection,
    KeepAlive,
    ProxyConnection,
    TransferEncoding,
    Te,
    Upgrade,
    Http2Settings,
    RequestId,
    Other,
}

impl FieldKind {
    fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl ReadFields {
    /// Done with: kept for the next head read on this thread.
    pub fn recycle(mut self: Box<Self>) {
        self.head = Bytes::new();
        self.fields.clear();
        Spares::keep_in(&SPARE_READS, self);
    }

    /// `f` of each field's kind, name as sent and value, a name's fields
    /// together, in a header map's order, and its line (from the name to
    /// the CRLF) where it was sent as it is written out. Not an iterator:
    /// one flattened cost 90 instructions a field, by
    /// `benches/instructions.sh`.
    pub fn each(&self, mut f: impl FnMut(FieldKind, &[u8], &[u8], Option<&[u8]>)) {
        for field in &self.fields {
            let line = field
                .as_written
                .then(|| self.text([field.name[0], field.value[1] + 2]));
            f(
                field.kind,
                self.text(field.name),
                self.text(field.value),
                line,
            );
        }
    }

    /// The values of the fields of `kind` (not `Other`).
    pub fn values(&self, kind: FieldKind) -> impl Iterator<Item = &[u8]> {
        let fields = match self.find(kind) {
            Some((start, end)) => &self.fields[start..end],
            None => &[],
        };
        fields.iter().map(|f| self.text(f.value))
    }

    /// Takes out the fields of `kind` (not `Other`), as `HeaderMap::remove`
    /// does: the last name's fields take their place. Whether there were
    /// any.
    ///
    /// Inlined down to the test of `present`: the stripping asks for six
    /// kinds a response, nearly all absent, and each call cost more
    /// than the test.
    #[inline]
    pub fn remove(&mut self, kind: FieldKind) -> bool {
        self.present & kind.bit() != 0 && self.remove_present(kind)
    }

    fn remove_present(&mut self, kind: FieldKind) -> bool {
        let Some((start, end)) = self.find(kind) else {
            return false;
        };
        self.present &= !kind.bit();
        let len = self.fields.len();
        if end < len {
            let last = self.fields.iter().rposition(|f| !f.same_name).unwrap_or(0);
            // The last name's fields go where the removed ones were.
            self.fields[start..].rotate_right(len - last);
            let moved = len - last;
            self.fields.drain(start + moved..end + moved);
        } else {
            self.fields.truncate(start);
        }
        true
    }

    /// Where the fields of `kind` are, `[start, end)`.
    fn find(&self, kind: FieldKind) -> Option<(usize, usize)> {
        if self.present & kind.bit() == 0 {
            return None;
        }
        // From the end: the fields stripped mostly come last (nginx ends
        // its answers with `Connection`); searched for from the start, its
        // removal cost 91 instructions a response, 71 so
        // (`benches/instructions.sh`). A kind's fields are side by side,
        // the first of them not `same_name`.
        let last = self.fields.iter().rposition(|f| f.kind == kind)?;
        let mut start = last;
        while start > 0 && self.fields[start].same_name {
            start -= 1;
        }
        Some((start, last + 1))
    }

    fn text(&self, [a, b]: [u16; 2]) -> &[u8] {
        &self.head[usize::from(a)..usize::from(b)]
    }
}

/// Above this many fields a head gets its map: each field's name is
/// compared with those before it (see [`read_fields`]).
const MAX_READ_FIELDS: usize = 32;

/// The head's fields as [`ReadFields`], with whether the connection stays
/// open and what they say of the body's length; `None` for a head that a
/// copy would not send as its header map is sent, which then gets its
/// map: a `Connection` naming other fields (they are stripped), a
/// `Trailer` (the writer reads it), more than one `Content-Length` (the
/// writer joins them), a name repeated apart from its first field (a map
/// groups them), or a head too long for the offsets.
fn read_fields(
    raw: &Bytes,
    spans: &[[u32; 4]],
    version: Version,
) -> Result<Option<(Box<ReadFields>, bool, Lengths)>, Error> {
    if spans.len() > MAX_READ_FIELDS || raw.len() > usize::from(u16::MAX) {
        return Ok(None);
    }
    let mut read = Spares::take_from(&SPARE_READS).unwrap_or_default();
    let filled = fill_read(raw, spans, version, &mut read.fields)?;
    Ok(match filled {
        Some((present, keep_alive, lengths)) => {
            read.present = present;
            read.head = raw.clone();
            Some((read, keep_alive, lengths))
        }
        None => {
            read.recycle();
            None
        }
    })
}

thread_local! {
    /// [`ReadFields`] written out, for the next heads read on this thread
    /// (about 250 bytes each).
    static SPARE_READS: Spares<ReadFields, KEPT_MAX> = const { Spares::new() };
}

/// [`read_fields`] into `fields` (empty): the kinds present, whether the
/// connection stays open, and what the fields say of the body's length.
fn fill_read(
    raw: &Bytes,
    spans: &[[u32; 4]],
    version: Version,
    fields: &mut SmallVec<[ReadField; 12]>,
) -> Result<Option<(u16, bool, Lengths)>, Error> {
    let mut alive = Alive::of(version);
    let mut lengths = Lengths {
        length: Ok(None),
        last_coding: None,
    };
    let mut present = 0;
    let mut lengths_seen = 0u64;
    let text = |[a, b]: [u16; 2]| &raw[usize::from(a)..usize::from(b)];
    for &[n0, n1, v0, v1] in spans {
        let name = &raw[n0 as usize..n1 as usize];
        let value = &raw[v0 as usize..v1 as usize];
        let is = |known: &'static str| folded_eq(name, known.as_bytes());
        let kind = match name.len() {
            2 if is("te") => FieldKind::Te,
            4 if is("date") => FieldKind::Date,
            7 if is("upgrade") => FieldKind::Upgrade,
            7 if is("trailer") => return Ok(None),
            10 if is("connection") => {
                if alive.read(value) {
                    return Ok(None);
                }
                FieldKind::Connection
            }
            10 if is("keep-alive") => FieldKind::KeepAlive,
            12 if is("x-request-id") => FieldKind::RequestId,
            14 if is("content-length") => {
                if lengths.length != Ok(None) {
                    return Ok(None);
                }
                lengths.length = add_length(lengths.length, value);
                FieldKind::ContentLength
            }
            14 if is("http2-settings") => FieldKind::Http2Settings,
            16 if is("proxy-connection") => FieldKind::ProxyConnection,
            17 if is("transfer-encoding") => {
                lengths.last_coding = Some(parsed_value(raw.slice(v0 as usize..v1 as usize)));
                FieldKind::TransferEncoding
            }
            0 => return Ok(None),
            _ => FieldKind::Other,
        };
        present |= kind.bit();
        // Only a name of a length seen before can be one seen before:
        // most heads repeat one length or two, and each field was compared
        // with all before it (on nginx's eight fields, 17,994 instructions
        // a request to 17,770 without, `benches/instructions.sh`).
        let length_bit = 1u64 << (name.len() % 64);
        let length_seen = lengths_seen & length_bit != 0;
        lengths_seen |= length_bit;
        let same_name = length_seen
            && fields
                .last()
                .is_some_and(|f| text(f.name).eq_ignore_ascii_case(name));
        // A map puts a name's fields together, where the first came.
        if length_seen
            && !same_name
            && fields
                .iter()
                .any(|f| text(f.name).eq_ignore_ascii_case(name))
        {
            return Ok(None);
        }
        let (n1, v0, v1) = (n1 as usize, v0 as usize, v1 as usize);
        let as_written =
            v0 == n1 + 2 && raw[n1..v0] == *b": " && raw.get(v1..v1 + 2) == Some(b"\r\n");
        let field = ReadField {
            name: [n0 as u16, n1 as u16],
            value: [v0 as u16, v1 as u16],
            kind,
            same_name,
            as_written,
        };
        fields.push(field);
    }
    Ok(Some((present, alive.keep_alive, lengths)))
}

/// A `Connection` value that speaks only of the connection (`close`,
/// `keep-alive`) and names no field the next hop must not see.
pub fn names_no_field(value: &[u8]) -> bool {
    visible(value).is_some_and(|s| {
        s.split(',').all(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("keep-alive") || t.eq_ignore_ascii_case("close")
        })
    })
}

/// Whether the comma-separated list `value` holds `token` (any case); a
/// value that is not visible ASCII holds none, as hyper reads it.
pub fn has_token(value: &HeaderValue, token: &str) -> bool {
    token_in(value.as_bytes(), token)
}

fn token_in(value: &[u8], token: &str) -> bool {
    visible(value).is_some_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// `value` as text if it is all visible ASCII (or tabs), as
/// `HeaderValue::to_str` has it.
fn visible(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// How the response body is delimited (RFC 9112 §6.3), strictly: a
/// response with both framings is refused rather than guessed at (a
/// proxy that forwards it invites smuggling).
fn framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    lengths: Lengths,
) -> Result<Framing, Error> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Error::UnexpectedUpgrade);
    }
    if status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD
    {
        return Ok(Framing::Length(0));
    }
    if let Some(last) = &lengths.last_coding {
        if version == Version::HTTP_10 {
            return Err(Error::Http10Chunked);
        }
        // Any `Content-Length` came, valid or not.
        if lengths.length != Ok(None) {
            return Err(Error::LengthAndChunked);
        }
        return Ok(if ends_in_chunked(last) {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        });
    }
    match lengths.length {
        Ok(Some(n)) => Ok(Framing::Length(n)),
        Ok(None) => Ok(Framing::Close),
        Err(()) => Err(Error::BadLength),
    }
}

/// What a response head's fields say of its body's length.
struct Lengths {
    /// Its `Content-Length` fields, all alike (`Err` if not); `Ok(None)`
    /// only when none came.
    length: Result<Option<u64>, ()>,
    /// The last `Transfer-Encoding` field.
    last_coding: Option<HeaderValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    /// Bytes left of the chunk's data.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then the empty line.
    Trailers,
    Done,
}

/// A first chunk-size line that came with the head, if any, is valid: a
/// body malformed from its start is refused (502) rather than begun.
fn first_chunk_ok(head: &Head, buf: &[u8]) -> bool {
    if head.framing != Framing::Chunked(Chunk::Size) {
        return true;
    }
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => chunk_size(&buf[..end]).is_some(),
        None => buf.len() <= MAX_CHUNK_LINE,
    }
}

/// Makes the response in `got`, where the caller takes it: made and then
/// returned, it was moved twice more.
fn respond<B>(
    mut conn: Conn,
    head: Head,
    wrap: impl FnOnce(ResponseBody) -> B,
    got: &mut Option<Response<B>>,
) {
    let Head {
        status,
        version,
        headers,
        read,
        reason,
        framing,
        keep_alive,
    } = head;
    let came_whole = matches!(framing, Framing::Length(n) if n > 0 && n == conn.link.buf.len() as u64)
        && conn.writer.is_none();
    let whole = came_whole.then(|| conn.link.buf.split().freeze());
    let mut body = ResponseBody {
        conn: Some(conn),
        framing: if came_whole {
            Framing::Length(0)
        } else {
            framing
        },
        keep_alive,
        failed: None,
        read_size: READ_SIZE,
        read,
        whole,
    };
    if came_whole || body.at_end() {
        body.release();
    }
    let resp = got.insert(Response::new(wrap(body)));
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    super::put_headers(resp.headers_mut(), headers);
    if let Some(reason) = reason {
        resp.extensions_mut().insert(reason);
    }
}

/// A response body read from its connection, which it owns until its
/// end and then puts back in its backend's idle list (if it stays open).
pub struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    /// The body's failure, given on the next poll.
    failed: Option<Error>,
    /// What the next read of a body of unknown length asks for.
    read_size: usize,
    /// The response's fields, when they were not put in its map; boxed,
    /// since each move of a response would copy them.
    read: Option<Box<ReadFields>>,
    /// The whole body, when it came with the head (a small one, most
    /// often) and the request was all written: the connection went back at
    /// once, so that an answer dropped unread (a 503 retried elsewhere)
    /// leaves it for the next request rather than closing it.
    whole: Option<Bytes>,
}

impl ResponseBody {
    /// The response's fields, if they were kept as read (`send`'s
    /// `as_read`): its header map is then empty.
    pub fn take_read_fields(&mut self) -> Option<Box<ReadFields>> {
        self.read.take()
    }

    /// The response's fields kept as read, for the proxy to strip.
    pub fn read_fields_mut(&mut self) -> Option<&mut ReadFields> {
        self.read.as_deref_mut()
    }

    fn at_end(&self) -> bool {
        self.whole.is_none()
            && matches!(
                self.framing,
                Framing::Length(0) | Framing::Chunked(Chunk::Done)
            )
    }

    /// At the body's end: the connection goes back if nothing makes it
    /// unfit (the request not all written, a close asked for, bytes past
    /// the response).
    fn release(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if conn.writer.is_some() {
            // Not written to its end yet: finish it now if it can be
            // done without waiting, else the connection is not kept.
            let waker = std::task::Waker::noop();
            conn.drive_writer(&mut Context::from_waker(waker));
        }
        if self.keep_alive && conn.complete && conn.link.buf.is_empty() {
            // A buffer that a body was read into is body-sized: let go.
            if conn.grown {
                conn.link.buf = BytesMut::new();
            }
            put(&conn.home, Kept(conn.link));
        }
    }

    /// Reads at most about `size` more bytes from the backend; `Ok(0)` at
    /// its close.
    fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>, size: usize) -> Poll<Result<usize, Error>> {
        conn.link.buf.reserve(size);
        conn.grown = true;
        match ready!(poll_read_buf(
            Pin::new(&mut conn.link.stream),
            cx,
            &mut conn.link.buf
        )) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(Error::Io(e))),
        }
    }

    /// Whether the rest of the body can be read straight from the socket
    /// ([`ResponseBody::poll_read_raw`]): some of its length is left, none
    /// of it is buffered, and the request is all written.
    pub fn reads_raw(&self) -> bool {
        matches!(self.framing, Framing::Length(1..))
            && self.failed.is_none()
            && self.conn.as_ref().is_some_and(|c| {
                c.link.buf.is_empty()
                    && c.writer.is_none()
                    && matches!(c.link.stream, Stream::Plain(_))
            })
    }

    /// Takes the body's next bytes straight from the backend's socket,
    /// once it has some: `read` is given the socket and the most it may
    /// take (what is left of the body) and says how many it took. The
    /// connection goes back to its backend's idle list with the last of
    /// them. A backend that closes before the end is an error, as it is
    /// for [`Body::poll_frame`]. Only while [`ResponseBody::reads_raw`].
    pub fn poll_read_raw(
        &mut self,
        cx: &mut Context<'_>,
        mut read: impl FnMut(&TcpStream, usize) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let stream = self.conn.as_ref().map(|c| &c.link.stream);
        let (Framing::Length(left), Some(Stream::Plain(stream))) = (self.framing, stream) else {
            return Poll::Ready(Err(io::ErrorKind::Unsupported.into()));
        };
        let stream = stream.get_ref();
        let most = usize::try_from(left).unwrap_or(usize::MAX);
        loop {
            ready!(stream.poll_read_ready(cx))?;
            match stream.try_io(tokio::io::Interest::READABLE, || read(stream, most)) {
                Ok(0) if most > 0 => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => {
                    self.framing = Framing::Length(left - n.min(most) as u64);
                    if self.at_end() {
                        self.release();
                    }
                    return Poll::Ready(Ok(n));
                }
                // Readiness is cleared: the next turn registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Whether the body's next bytes may be taken with their chunked
    /// framing as it came ([`ResponseBody::poll_raw_chunks`]): it stands
    /// between two chunks.
    pub fn reads_chunks_raw(&self) -> bool {
        self.framing == Framing::Chunked(Chunk::Size)
            && self.failed.is_none()
            && self.conn.is_some()
    }

    /// The body's next whole chunks with their framing, as the backend
    /// sent them (checked as [`decode_chunk`] checks it), and how many of
    /// their bytes are data: for a client taking chunks too, which then
    /// gets them in one write a read rather than one a chunk, and no
    /// size line made anew. With them the last chunk when it ends the
    /// body without trailers (the connection then goes back).
    /// [`RawChunks::Frames`] where the next is to be taken as frames: the
    /// last chunk with trailers, a size line with anything but hex digits
    /// (extensions, blanks: the client gets it without), and a chunk
    /// whose data has begun to come and not ended, which frames stream.
    pub fn poll_raw_chunks(&mut self, cx: &mut Context<'_>) -> Poll<Result<RawChunks, Error>> {
        loop {
            let (Framing::Chunked(Chunk::Size), Some(conn)) = (self.framing, self.conn.as_mut())
            else {
                return Poll::Ready(Ok(RawChunks::Frames));
            };
            conn.drive_writer(cx);
            let buf = &conn.link.buf;
            let (mut at, mut data) = (0, 0u64);
            // Where the scan stopped: `Ok(true)` in a chunk not all read,
            // `Ok(false)` before one for frames.
            let stop: Result<bool, Error> = loop {
                let Some(end) = buf[at..].iter().position(|&b| b == b'\n') else {
                    if buf.len() - at > MAX_CHUNK_LINE {
                        break Err(Error::BadChunk);
                    }
                    break Ok(true);
                };
                let line = &buf[at..at + end];
                let Some(size) = chunk_size(line) else {
                    break Err(Error::BadChunk);
                };
                if !line[..line.len() - 1].iter().all(u8::is_ascii_hexdigit) {
                    break Ok(false);
                }
                let data_at = at + end + 1;
                if size == 0 {
                    if &buf[data_at..] == b"\r\n" {
                        at = buf.len();
                        self.framing = Framing::Chunked(Chunk::Done);
                    }
                    break Ok(false);
                }
                let Some(chunk_end) = usize::try_from(size)
                    .ok()
                    .and_then(|size| data_at.checked_add(size)?.checked_add(2))
                    .filter(|&e| e <= buf.len())
                else {
                    // Read on for it while none of its data has come; once
                    // some has, frames take it as it comes, so that nothing
                    // waits for the rest of a chunk.
                    break Ok(buf.len() == data_at);
                };
                if &buf[chunk_end - 2..chunk_end] != b"\r\n" {
                    break Err(Error::BadChunk);
                }
                at = chunk_end;
                data += size;
            };
            if at > 0 {
                let raw = conn.link.buf.split_to(at).freeze();
                match stop {
                    // What came before the fault goes out first, as with
                    // frames; the fault is the next poll's.
                    Err(e) => {
                        self.conn = None;
                        self.failed = Some(e);
                    }
                    Ok(_) if self.at_end() => self.release(),
                    Ok(_) => {}
                }
                return Poll::Ready(Ok(RawChunks::Bytes(raw, data)));
            }
            if !stop? {
                return Poll::Ready(Ok(RawChunks::Frames));
            }
            match ready!(Self::poll_fill_unknown(conn, cx, &mut self.read_size)) {
                Ok(1..) => {}
                Ok(0) => return Poll::Ready(Err(Error::Incomplete)),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reads a body of unknown length, asking for twice as much next time
    /// when the read filled what it asked for.
    fn poll_fill_unknown(
        conn: &mut Conn,
        cx: &mut Context<'_>,
        read_size: &mut usize,
    ) -> Poll<Result<usize, Error>> {
        let n = ready!(Self::poll_fill(conn, cx, *read_size))?;
        if n >= *read_size {
            *read_size = (*read_size * 2).min(BODY_READ_MAX);
        }
        Poll::Ready(Ok(n))
    }

    /// Ends the body with `e`, on the poll after this one: hyper's
    /// server writes out what it holds of the response when a body is
    /// pending, but drops it when the body fails, so the client gets
    /// what the backend sent before its failure.
    fn fail(
        &mut self,
        e: Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            this.framing = Framing::Length(0);
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(whole) = this.whole.take() {
            return Poll::Ready(Some(Ok(Frame::data(whole))));
        }
        loop {
            if this.at_end() {
                this.release();
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            conn.drive_writer(cx);
            let frame = match &mut this.framing {
                Framing::Length(left) => {
                    if conn.link.buf.is_empty() {
                        let size = (*left).clamp(READ_SIZE as u64, BODY_READ_MAX as u64) as usize;
                        match ready!(Self::poll_fill(conn, cx, size)) {
                            Ok(1..) => continue,
                            Ok(0) => return this.fail(Error::Incomplete, cx),
                            Err(e) => return this.fail(e, cx),
                        }
                    }
                    let n = (*left).min(conn.link.buf.len() as u64);
                    *left -= n;
                    conn.link.buf.split_to(n as usize).freeze()
                }
                Framing::Close => {
                    if conn.link.buf.is_empty() {
                        match ready!(Self::poll_fill_unknown(conn, cx, &mut this.read_size)) {
                            Ok(1..) => continue,
                            Ok(0) => {
                                this.conn = None;
                                this.framing = Framing::Length(0);
                                return Poll::Ready(None);
                            }
                            Err(e) => return this.fail(e, cx),
                        }
                    }
                    conn.link.buf.split().freeze()
                }
                Framing::Chunked(state) => match decode_chunk(state, &mut conn.link.buf) {
                    Ok(Step::Data(data)) => data,
                    Ok(Step::More) => {
                        match ready!(Self::poll_fill_unknown(conn, cx, &mut this.read_size)) {
                            Ok(1..) => continue,
                            Ok(0) => return this.fail(Error::Incomplete, cx),
                            Err(e) => return this.fail(e, cx),
                        }
                    }
                    Ok(Step::Done) => continue,
                    Ok(Step::Trailers(fields)) => {
                        // The trailer section ends the body.
                        this.release();
                        return Poll::Ready(Some(Ok(Frame::trailers(fields))));
                    }
                    Err(e) => return this.fail(e, cx),
                },
            };
            if frame.is_empty() {
                continue;
            }
            if this.at_end() {
                this.release();
            }
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.at_end() && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(whole) = &self.whole {
            return SizeHint::with_exact(whole.len() as u64);
        }
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// What [`ResponseBody::poll_raw_chunks`] gave.
pub enum RawChunks {
    /// Chunks with their framing as the backend sent them, and how many
    /// of their bytes are data.
    Bytes(Bytes, u64),
    /// The body's next part is to be taken as frames.
    Frames,
}

/// What decoding a chunked body's buffered bytes gave.
enum Step {
    Data(Bytes),
    /// The trailer section, which ends the body.
    Trailers(HeaderMap),
    /// The body ended without trailers.
    Done,
    /// More bytes are needed.
    More,
}

/// Decodes what `buf` holds of a chunked body from `state` on.
fn decode_chunk(state: &mut Chunk, buf: &mut BytesMut) -> Result<Step, Error> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err(Error::BadChunk)
                    } else {
                        Ok(Step::More)
                    };
                };
                let size = chunk_size(&buf[..end]).ok_or(Error::BadChunk)?;
                buf.advance(end + 1);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = left.min(buf.len() as u64);
                *state = if n == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n)
                };
                return Ok(Step::Data(buf.split_to(n as usize).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::BadChunk);
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] == b"\r\n" {
                    buf.advance(2);
                    *state = Chunk::Done;
                    return Ok(Step::Done);
                }
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return if buf.len() > MAX_HEAD {
                        Err(Error::BadChunk)
                    } else {
                        Ok(Step::More)
                    };
                };
                let section = buf.split_to(end + 4).freeze();
                let trailers = trailer_map(&section).ok_or(Error::BadChunk)?;
                *state = Chunk::Done;
                return Ok(Step::Trailers(trailers));
            }
            Chunk::Done => return Ok(Step::Done),
        }
    }
}

/// A chunked body's trailer section (its fields' lines, then the empty
/// line) as a map, as hyper's decoder makes it: `None` where a line does
/// not parse, there are more than [`MAX_HEADERS`] fields, or a name or
/// value cannot be made. Answers' (by this client) and requests' (by the
/// HTTP/1 server) alike.
pub(crate) fn trailer_map(section: &[u8]) -> Option<HeaderMap> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(section, &mut fields)
    else {
        return None;
    };
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for f in parsed.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(f.value).ok()?;
        trailers.append(name, value);
    }
    Some(trailers)
}

/// A chunk-size line without its LF: hex digits, then optional
/// whitespace and extensions, then CR.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r")?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    let blank = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let rest = &rest[blank..];
    if !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// A response head parsed as `send` parses it, with or without `as_read`:
/// its map, its fields as read, and how its connection and body go.
#[cfg(test)]
#[allow(clippy::type_complexity)]
pub(crate) fn parse_for_test(
    text: &[u8],
    as_read: bool,
) -> Result<(HeaderMap, Option<Box<ReadFields>>, bool, String), Error> {
    let mut buf = BytesMut::from(text);
    let head = parse_head(&mut buf, &Method::GET, &mut HeaderMap::new(), as_read)?;
    let head = head.and_then(|h| h).ok_or(Error::Incomplete)?;
    let framing = format!("{:?}", head.framing);
    Ok((head.headers, head.read, head.keep_alive, framing))
}

/// A chunked body made from `rng` for the decoders' tests: chunks of
/// sizes written in lower or upper case or zero-padded, extensions, a
/// trailer section of up to three fields; and, when `malformed`, one
/// fault in one place (a size that is not hex or overflows, a chunk
/// longer than its size, a bare LF, a trailer line without a colon).
/// The body's data and trailer fields, for a well-formed one.
#[cfg(test)]
#[allow(clippy::type_complexity)]
pub(crate) fn generated_chunked(
    rng: &mut fastrand::Rng,
    malformed: bool,
) -> (Vec<u8>, Vec<u8>, Vec<(String, String)>) {
    let mut wire = Vec::new();
    let mut data = Vec::new();
    let fault = malformed.then(|| rng.u8(..6));
    for _ in 0..rng.usize(0..5) {
        let n = rng.usize(1..40);
        let chunk: Vec<u8> = (0..n).map(|_| rng.alphanumeric() as u8).collect();
        let size = match rng.u8(..6) {
            0 => format!("{n:X}"),
            1 => format!("000{n:x}"),
            _ => format!("{n:x}"),
        };
        let ext = match rng.u8(..8) {
            0 => ";a=b",
            1 => ";name=\"v\"",
            2 => " ;x",
            _ => "",
        };
        wire.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
        wire.extend_from_slice(&chunk);
        wire.extend_from_slice(b"\r\n");
        data.extend_from_slice(&chunk);
    }
    let mut trailers = Vec::new();
    wire.extend_from_slice(b"0\r\n");
    for i in 0..rng.usize(0..4) {
        let (name, value) = (format!("x-t{i}"), format!("v{}", rng.u16(..)));
        wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        trailers.push((name, value));
    }
    wire.extend_from_slice(b"\r\n");
    let (at, fault): (usize, &[u8]) = match fault {
        None => (0, b""),
        Some(0) => (0, b"zz\r\nab\r\n"),
        Some(1) => (0, b"fffffffffffffffff1\r\na\r\n"),
        Some(2) => (0, b"1\r\nabc\r\n"),
        Some(3) => (0, b"2\nab\r\n"),
        Some(4) => (wire.len() - 2, b"no colon here\r\n"),
        Some(_) => (0, b"3\r\nabc"),
    };
    wire.splice(at..at, fault.iter().copied());
    (wire, data, trailers)
}

/// `wire` cut into one to four pieces at places from `rng`.
#[cfg(test)]
pub(crate) fn cut_anywhere<'a>(rng: &mut fastrand::Rng, wire: &'a [u8]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = (0..rng.usize(0..4))
        .map(|_| rng.usize(0..=wire.len()))
        .collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for cut in cuts {
        pieces.push(&wire[from..cut]);
        from = cut;
    }
    pieces.push(&wire[from..]);
    pieces
}

/// What a chunked decoder made of a body: its data and trailer fields,
/// `None` for an error; `Some` with `false` for a body not ended.
#[cfg(test)]
pub(crate) type Decoded = Option<(Vec<u8>, Vec<(String, String)>, bool)>;

#[cfg(test)]
pub(crate) fn trailer_pairs(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect()
}

/// Checks a chunked decoder (`decode`: the body's pieces in, as reads
/// bring them): however the reads cut a generated body, it decodes the
/// same data and trailers, or fails alike; a well-formed body to what
/// was sent.
#[cfg(test)]
pub(crate) fn check_chunked_decoder(seed: u64, decode: impl Fn(&[&[u8]]) -> Decoded) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for case in 0..4000 {
        let malformed = case % 4 == 0;
        let (wire, data, trailers) = generated_chunked(&mut rng, malformed);
        let whole = decode(&[&wire]);
        if !malformed {
            assert_eq!(
                whole,
                Some((data, trailers, true)),
                "{}",
                String::from_utf8_lossy(&wire)
            );
        }
        for _ in 0..4 {
            let pieces = cut_anywhere(&mut rng, &wire);
            assert_eq!(
                decode(&pieces),
                whole,
                "{:?}",
                pieces
                    .iter()
                    .map(|p| String::from_utf8_lossy(p))
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`decode_chunk`] over `pieces`, as reads bring them.
    fn decode_in_pieces(pieces: &[&[u8]]) -> Decoded {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match decode_chunk(&mut state, &mut buf) {
                    Err(_) => return None,
                    Ok(Step::Data(d)) => data.extend_from_slice(&d),
                    Ok(Step::Trailers(t)) => return Some((data, trailer_pairs(&t), true)),
                    Ok(Step::Done) => return Some((data, Vec::new(), true)),
                    Ok(Step::More) => break,
                }
            }
        }
        Some((data, Vec::new(), false))
    }

    /// However the reads cut a chunked answer, the client decodes the
    /// same data and trailers, or fails alike.
    #[test]
    fn chunked_answers_decode_the_same_however_they_are_cut() {
        check_chunked_decoder(0x6368_756e_6b73, decode_in_pieces);
    }

    /// A response's body is moved with the response, six times a
    /// request: the connection it reads from is a pointer in it, not the
    /// socket and buffer themselves (see [`Link`]). 128 bytes with the
    /// dependencies of 2026-12 on x86_64; a field that grows it is paid
    /// for on every request.
    #[test]
    fn a_response_body_holds_its_connection_by_pointer() {
        assert_eq!(size_of::<Option<Conn>>(), size_of::<Conn>());
        assert!(size_of::<Conn>() <= 32, "Conn: {}", size_of::<Conn>());
        assert!(
            size_of::<ResponseBody>() <= 128,
            "ResponseBody: {}",
            size_of::<ResponseBody>()
        );
    }

    /// A TLS connection to a server that writes `sent` as soon as the
    /// handshake is done, and keeps the connection open.
    async fn tls_pair(sent: &'static [u8]) -> TlsStream {
        use tokio::io::AsyncWriteExt;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            tls.write_all(sent).await.unwrap();
            tls.flush().await.unwrap();
            std::future::pending::<()>().await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(
            crate::tls_client::client_config(None, false, &[]).unwrap(),
        );
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        connector
            .connect(name, AnswerFirst::new(TcpIo::new(tcp)))
            .await
            .unwrap()
    }

    /// A kept TLS connection is not taken again while rustls holds bytes
    /// it decrypted and nobody read: they would begin the next answer.
    #[tokio::test]
    async fn a_tls_connection_holding_unread_bytes_is_not_open_for_use() {
        use tokio::io::AsyncReadExt;
        let mut quiet = Stream::Tls(Box::new(tls_pair(b"").await));
        assert!(still_open(&mut quiet), "nothing came: open");
        let mut tls = tls_pair(b"stray").await;
        // One byte read: rustls decrypted the record, four bytes wait in it.
        let mut first = [0u8; 1];
        tls.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"s");
        assert_eq!(
            tls.get_ref()
                .0
                .get_ref()
                .get_ref()
                .try_read(&mut [0u8; 8])
                .err()
                .map(|e| e.kind()),
            Some(io::ErrorKind::WouldBlock),
            "the socket itself is empty"
        );
        let mut held = Stream::Tls(Box::new(tls));
        assert!(!still_open(&mut held), "bytes held by rustls: not open");
    }

    #[test]
    fn common_names_are_the_names_from_bytes_makes() {
        for raw in [
            "Host",
            "Date",
            "Server",
            "Connection",
            "Content-Type",
            "Content-Length",
            "Accept",
            "User-Agent",
            "Last-Modified",
            "ETag",
            "Accept-Ranges",
            "Cache-Control",
            "Accept-Encoding",
            "Accept-Language",
            "Cookie",
            "Referer",
            "Origin",
            "Authorization",
            "If-None-Match",
            "If-Modified-Since",
            "Upgrade-Insecure-Requests",
            "Content-Encoding",
            "Vary",
            "Expires",
            "Set-Cookie",
            "Location",
            "Sec-Fetch-Site",
            "Sec-Fetch-Mode",
            "Sec-Fetch-User",
            "Sec-Fetch-Dest",
            "Sec-CH-UA",
            "Sec-CH-UA-Mobile",
            "Sec-CH-UA-Platform",
            "X-Forwarded-For",
            "X-Forwarded-Proto",
            "X-Real-IP",
        ] {
            // The names geolb may pass unread match in any case.
            let any_case = UnreadName::of(raw.as_bytes()).is_some();
            for (spelled, matched) in [
                (raw.to_owned(), true),
                (raw.to_ascii_lowercase(), true),
                (raw.to_ascii_uppercase(), any_case),
            ] {
                assert_eq!(
                    known_name(spelled.as_bytes()).is_some(),
                    matched,
                    "{spelled}"
                );
                assert_eq!(
                    field_name(spelled.as_bytes()).unwrap(),
                    HeaderName::from_bytes(spelled.as_bytes()).unwrap(),
                    "{spelled}"
                );
            }
        }
        for bad in [&b""[..], b"Bad Name", b"a\x00"] {
            assert!(field_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(field_name(b"X-Custom").unwrap(), "x-custom");
    }

    /// `parsed_value` trusts httparse's check of a value's bytes: every
    /// byte inside a value, in a request and in a response, must pass
    /// httparse exactly when it passes `HeaderValue::from_bytes`.
    #[test]
    fn httparse_admits_the_bytes_a_header_value_does() {
        for b in 0..=255u8 {
            let value = [b'a', b, b'a'];
            let valid = HeaderValue::from_bytes(&value).is_ok();
            let mut request = b"GET / HTTP/1.1\r\nX: ".to_vec();
            let mut response = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
            for head in [&mut request, &mut response] {
                head.extend_from_slice(&value);
                head.extend_from_slice(b"\r\n\r\n");
            }
            let mut fields = [httparse::EMPTY_HEADER; 4];
            let in_request = httparse::Request::new(&mut fields).parse(&request);
            let in_request =
                matches!(in_request, Ok(httparse::Status::Complete(_))) && fields[0].value == value;
            let mut fields = [httparse::EMPTY_HEADER; 4];
            let in_response = httparse::Response::new(&mut fields).parse(&response);
            let in_response = matches!(in_response, Ok(httparse::Status::Complete(_)))
                && fields[0].value == value;
            assert_eq!(in_request, valid, "byte {b:#04x} in a request");
            assert_eq!(in_response, valid, "byte {b:#04x} in a response");
        }
    }

    #[test]
    fn chunk_size_lines() {
        assert_eq!(chunk_size(b"1a\r"), Some(26));
        assert_eq!(chunk_size(b"A;name=value\r"), Some(10));
        assert_eq!(chunk_size(b"5 \t;x\r"), Some(5));
        for bad in [
            &b"zz\r"[..],
            b"\r",
            b"5",
            b"5 x\r",
            b"-1\r",
            b"11111111111111111\r",
        ] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn head(text: &[u8], method: Method) -> Result<Option<Option<Head>>, Error> {
        parse_head(
            &mut BytesMut::from(text),
            &method,
            &mut HeaderMap::new(),
            false,
        )
    }

    #[test]
    fn framing_is_strict() {
        let framed = |text: &[u8]| head(text, Method::GET).map(|h| h.unwrap().unwrap().framing);
        assert_eq!(
            framed(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n").unwrap(),
            Framing::Length(3)
        );
        assert!(matches!(
            framed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Err(Error::BadLength)
        ));
        assert!(matches!(
            framed(b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n"),
            Err(Error::BadLength)
        ));
        assert!(matches!(
            framed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Error::LengthAndChunked)
        ));
        assert!(matches!(
            framed(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Error::Http10Chunked)
        ));
        assert_eq!(
            framed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap(),
            Framing::Close
        );
        assert_eq!(
            framed(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").unwrap(),
            Framing::Length(0)
        );
        let head_resp = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            Method::HEAD,
        );
        assert_eq!(
            head_resp.unwrap().unwrap().unwrap().framing,
            Framing::Length(0)
        );
        assert!(matches!(
            framed(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"),
            Err(Error::Parse(_))
        ));
        // A 1xx is skipped, and a partial head waits for more.
        assert!(matches!(
            head(b"HTTP/1.1 100 Continue\r\n\r\n", Method::GET),
            Ok(Some(None))
        ));
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\nX: a", Method::GET),
            Ok(None)
        ));
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        // Alike whether the fields go into a map or are kept as read.
        let kept = |text: &[u8]| {
            let [in_map, as_read] =
                [false, true].map(|as_read| parse_for_test(text, as_read).unwrap().2);
            assert_eq!(in_map, as_read, "{}", String::from_utf8_lossy(text));
            in_map
        };
        assert!(kept(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(kept(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!kept(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!kept(
            b"HTTP/1.1 200 OK\r\nConnection: x, close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!kept(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        // Not an HTTP/1.0 backend's, even offered: no chunked upload may
        // go to it (RFC 9112 §6.1).
        assert!(!kept(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!kept(b"HTTP/1.1 200 OK\r\n\r\n"), "close-delimited");
    }

    #[test]
    fn hop_by_hop_fields_are_left_out_unless_connection_names_others() {
        let names = |text: &[u8]| -> Vec<String> {
            let head = head(text, Method::GET).unwrap().unwrap().unwrap();
            head.headers.keys().map(|n| n.to_string()).collect()
        };
        assert_eq!(
            names(
                b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\n\
                  Proxy-Connection: keep-alive\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n"
            ),
            ["x-a", "content-length"]
        );
        // Fields named in Connection: it stays, for the proxy to strip them.
        assert_eq!(
            names(
                b"HTTP/1.1 200 OK\r\nConnection: close, x-a\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n"
            ),
            ["connection", "x-a", "content-length"]
        );
    }

    fn read(text: &[u8]) -> Option<Box<ReadFields>> {
        parse_for_test(text, true).unwrap().1
    }

    #[test]
    fn a_field_sent_as_it_is_written_out_comes_with_its_line() {
        let fields = read(
            b"HTTP/1.1 200 OK\r\nServer: s\r\nX-A:1\r\nX-B:  2 \r\nX-Empty: \r\nX-None:\r\n\
              X-Last: 3\r\n\r\n",
        )
        .unwrap();
        let mut lines = Vec::new();
        fields.each(|_, n, _, line| lines.push((n.to_vec(), line.map(<[u8]>::to_vec))));
        let line = |text: &str| Some(text.as_bytes().to_vec());
        assert_eq!(
            lines,
            [
                (b"Server".to_vec(), line("Server: s\r\n")),
                (b"X-A".to_vec(), None),
                (b"X-B".to_vec(), None),
                (b"X-Empty".to_vec(), line("X-Empty: \r\n")),
                (b"X-None".to_vec(), None),
                (b"X-Last".to_vec(), line("X-Last: 3\r\n")),
            ]
        );
        let lf = read(b"HTTP/1.1 200 OK\nX-Lf: yes\n\n").unwrap();
        lf.each(|_, _, _, line| assert_eq!(line, None));
    }

    #[test]
    fn heads_a_copy_would_send_otherwise_get_a_map() {
        for text in [
            &b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-A: 1\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTrailer: x-sum\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 1\r\nx-a: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nServer: s\r\nx-a: 2\r\n\r\n",
        ] {
            assert!(read(text).is_none(), "{}", String::from_utf8_lossy(text));
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_READ_FIELDS {
            many.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(read(&many).is_none());
        // Names of one length, each once: no map.
        assert!(read(b"HTTP/1.1 200 OK\r\nDate: d\r\nETag: e\r\nVary: v\r\n\r\n").is_some());
        let fields =
            read(b"HTTP/1.1 200 OK\r\nDate: d\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n");
        let mut got = Vec::new();
        fields
            .unwrap()
            .each(|k, n, v, _| got.push((k, n.to_vec(), v.to_vec())));
        let fields = got;
        assert_eq!(
            fields,
            [
                (FieldKind::Date, b"Date".to_vec(), b"d".to_vec()),
                (FieldKind::Other, b"X-A".to_vec(), b"1".to_vec()),
                (FieldKind::Other, b"x-a".to_vec(), b"2".to_vec()),
                (
                    FieldKind::ContentLength,
                    b"Content-Length".to_vec(),
                    b"0".to_vec()
                ),
            ]
        );
    }

    /// Taking fields out of [`ReadFields`] leaves the others in the order
    /// a header map of them leaves its own, for every order of removals.
    #[test]
    fn read_fields_are_removed_as_a_map_removes_them() {
        let text = b"HTTP/1.1 200 OK\r\nTE: a\r\nDate: 1\r\ndate: 2\r\nX-Other: 1\r\n\
            Upgrade: 1\r\nConnection: keep-alive\r\nKeep-Alive: 1\r\nKeep-Alive: 2\r\n\
            HTTP2-Settings: 1\r\n\r\n";
        let kinds = [
            (FieldKind::Te, "te"),
            (FieldKind::Date, "date"),
            (FieldKind::Upgrade, "upgrade"),
            (FieldKind::Connection, "connection"),
            (FieldKind::KeepAlive, "keep-alive"),
            (FieldKind::Http2Settings, "http2-settings"),
            (FieldKind::RequestId, "x-request-id"),
        ];
        let n = kinds.len();
        // Every sequence of three removals.
        for i in 0..n.pow(3) {
            let picked = [i % n, i / n % n, i / n / n].map(|k| kinds[k]);
            let mut read = read(text).unwrap();
            let mut map = HeaderMap::new();
            read.each(|_, n, v, _| {
                map.append(
                    HeaderName::from_bytes(n).unwrap(),
                    HeaderValue::from_bytes(v).unwrap(),
                );
            });
            for (kind, name) in picked {
                assert_eq!(read.remove(kind), map.remove(name).is_some(), "{picked:?}");
            }
            let mut from_read = Vec::new();
            read.each(|_, n, v, _| from_read.push((n.to_ascii_lowercase(), v.to_vec())));
            let from_map: Vec<_> = map
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            assert_eq!(from_read, from_map, "{picked:?}");
        }
    }

    #[test]
    fn chunked_bodies_decode_with_trailers() {
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"[..]);
        let mut state = Chunk::Size;
        assert!(matches!(decode_chunk(&mut state, &mut buf), Ok(Step::Data(d)) if d == "abc"));
        match decode_chunk(&mut state, &mut buf) {
            Ok(Step::Trailers(t)) => assert_eq!(t["x-t"], "1"),
            _ => panic!("trailers expected"),
        }
        assert_eq!(state, Chunk::Done);
        let mut bad = BytesMut::from(&b"3\r\nabcX\r\n"[..]);
        let mut state = Chunk::Size;
        assert!(decode_chunk(&mut state, &mut bad).is_ok());
        assert!(matches!(
            decode_chunk(&mut state, &mut bad),
            Err(Error::BadChunk)
        ));
    }
}
