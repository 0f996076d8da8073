//! geolb's own HTTP/1.x server for client connections (`http1_server =
//! "geolb"`): each head read into one buffer and parsed once with
//! `httparse` (as hyper does, with hyper's limits and refusals), handed as
//! an `http::Request` to the same `http::respond` as hyper's, and the
//! answer's head written with its first body bytes in one `writev`.
//!
//! It answers what hyper would, byte for byte but the `Date`
//! (`tests/h1server.rs` compares them): the same framing rules (RFC 9112
//! §6: Transfer-Encoding wins over Content-Length and closes the
//! connection after, differing lengths are refused), `Connection`
//! handling, `100 Continue` when the body is first read, HEAD, 204 and 304
//! without a body, chunked when the answer has no length.
//!
//! What it does not serve it hands to hyper with the bytes it has read
//! (`Rewind`): a connection that opens with the HTTP/2 preface (prior
//! knowledge, or `h2` by ALPN), and from a request asking to `Upgrade`
//! (WebSocket) on, the rest of the connection: upgrades are rare and
//! hyper's tunnel code already carries them.
//!
//! The request body is read by whoever forwards it (the backend's
//! connection) through the connection's reader, shared under a mutex with
//! the head reader that takes it back once the response is written.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

use super::activity::{Activity, MAX_HEAD, TrackedIo, URI_TOO_LONG};
use super::body::ResponseBody;
use super::halves::{ReadHalf, Socket, WriteHalf};
use super::header_rules::{X_REQUEST_ID, put_request_id};
use super::pipes::{Pipe, SPLICE_FLAGS, unsupported};
use super::read_gate::GatedRead;
use super::woken::Woken;
use crate::config::Timeouts;
use crate::conn_lock::{self, ConnLock};
use crate::readbuf::poll_read_exact_size;
use crate::request_id::RequestId;
use crate::upstream::h1::{
    FieldKind, RawChunks, ReadFields, announced_trailers, content_length_value, field_name,
    may_be_trailer, names_no_field, parsed_value, trailer_map,
};
use crate::upstream::unread::{Unread, UnreadName, UnreadNames, folded_eq};
use crate::upstream::{BackendRequestBody, BodyProgress, RequestBody};

/// What this server needs of the connection it serves from the proxy that
/// calls it (`http::ConnCtx`), declared here so that this module imports
/// nothing from its caller.
pub(super) trait Client: Send + Sync + 'static {
    fn activity(&self) -> &Arc<Activity>;
    fn peer(&self) -> std::net::SocketAddr;
    fn shutdown(&self) -> &tokio_util::sync::CancellationToken;
    /// Puts in `out` the answer to the request taken from `lent`, routed
    /// and forwarded; `timer` times the backend's answer, one for all of
    /// the connection's requests. `unread`: the request's fields passed
    /// on unread (see `upstream::unread`); `host`: its `Host`, where it
    /// was the one and first field, kept out of the map.
    fn respond<'a>(
        &'a self,
        lent: &'a mut Option<Request<BackendRequestBody>>,
        body_progress: Option<BodyProgress>,
        unread: Option<Box<Unread>>,
        host: Option<HeaderValue>,
        timer: Pin<&'a mut super::answer_timer::AnswerTimer>,
        out: &'a mut Option<Answer>,
    ) -> impl std::future::Future<Output = ()> + Send + 'a;
}

/// A response, and the `X-Request-Id` to write after its fields.
pub(super) type Answer = (Response<ResponseBody>, Option<RequestId>);

/// hyper's default `h1_max_headers`: past it, 431.
const MAX_HEADERS: usize = 100;
/// hyper's limit on the bytes of a chunked body's trailer section (its
/// fields are as many as a head's, [`MAX_HEADERS`]).
const TRAILER_LIMIT: usize = 16 * 1024;
/// hyper's limit on a chunked body's extension bytes.
const EXTENSIONS_LIMIT: u64 = 16 * 1024;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A connection handed to hyper: what was read of it, then the rest.
pub(super) struct Rewind<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    /// Whether the client opened with HTTP/2's preface: HTTP/2 by prior
    /// knowledge (h2c), for hyper's HTTP/2 server alone.
    pub(super) fn opens_http2(&self) -> bool {
        self.prefix.starts_with(PREFACE)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The read side of a connection: its buffer and where the current
/// request's body is.
struct Reader<I> {
    io: GatedRead<ReadHalf<TrackedIo<I>>>,
    buf: BytesMut,
    body: Framing,
    /// The response is written: the body's bytes are the connection's
    /// again, whoever still holds the body.
    detached: bool,
    /// `Expect: 100-continue` not yet answered.
    expect: bool,
    /// Counts the requests with a body: a body of an earlier request that
    /// something still holds must not read a later one's bytes.
    request: u64,
    /// A body was read into the buffer, which is then body-sized: let go
    /// once empty, for heads to be read into one of their size.
    grown: bool,
    /// A chunked body's trailer section as it is read (none until its
    /// first field begins).
    trailers: Option<BytesMut>,
}

/// How much of the current request's body is still to come.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Done,
    Length(u64),
    Chunked(Chunked),
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Chunked {
    state: Chunk,
    size: u64,
    extensions: u64,
    /// Trailer fields read.
    trailers: usize,
}

/// hyper's chunked decoder's states (`proto::h1::decode`), same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Body,
    BodyCr,
    BodyLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

fn bad(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Chunked {
    fn new() -> Chunked {
        Chunked {
            state: Chunk::Start,
            size: 0,
            extensions: 0,
            trailers: 0,
        }
    }

    /// Steps through `buf` to the next body bytes, the body's end, or the
    /// buffer's; a trailer section's bytes go into `trailers`, as hyper's
    /// decoder keeps them.
    fn step(&mut self, buf: &mut BytesMut, trailers: &mut Option<BytesMut>) -> io::Result<Step> {
        use Chunk::*;
        fn digit(b: u8) -> Option<u64> {
            (b as char).to_digit(16).map(u64::from)
        }
        fn keep(trailers: &mut BytesMut, b: u8) -> io::Result<()> {
            trailers.extend_from_slice(&[b]);
            if trailers.len() >= TRAILER_LIMIT {
                return Err(bad("chunk trailers bytes over limit"));
            }
            Ok(())
        }
        while !buf.is_empty() {
            if self.state == Body {
                let n = (buf.len() as u64).min(self.size) as usize;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = BodyCr;
                }
                return Ok(Step::Data(n));
            }
            let b = buf[0];
            buf.advance(1);
            self.state = match (self.state, b) {
                (Start | Size, b) if digit(b).is_some() => {
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(digit(b).unwrap_or(0)))
                        .ok_or_else(|| bad("invalid chunk size: overflow"))?;
                    Size
                }
                (Start, _) => return Err(bad("invalid chunk size line: missing size digit")),
                (Size | SizeLws, b'\t' | b' ') => SizeLws,
                (Size | SizeLws, b';') => Extension,
                (Size | SizeLws, b'\r') => SizeLf,
                (Size, _) => return Err(bad("invalid chunk size line: invalid size")),
                (SizeLws, _) => return Err(bad("invalid chunk size linear white space")),
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err(bad("invalid chunk extension contains newline")),
                (Extension, _) => {
                    self.extensions += 1;
                    if self.extensions >= EXTENSIONS_LIMIT {
                        return Err(bad("chunk extensions over limit"));
                    }
                    Extension
                }
                (SizeLf, b'\n') if self.size == 0 => EndCr,
                (SizeLf, b'\n') => Body,
                (SizeLf, _) => return Err(bad("invalid chunk size LF")),
                (BodyCr, b'\r') => BodyLf,
                (BodyCr, _) => return Err(bad("invalid chunk body CR")),
                (BodyLf, b'\n') => Start,
                (BodyLf, _) => return Err(bad("invalid chunk body LF")),
                (EndCr, b'\r') => {
                    if let Some(t) = trailers {
                        keep(t, b)?;
                    }
                    EndLf
                }
                (EndCr | Trailer, _) => {
                    keep(trailers.get_or_insert_with(BytesMut::new), b)?;
                    if b == b'\r' { TrailerLf } else { Trailer }
                }
                (TrailerLf, b'\n') => {
                    if self.trailers >= MAX_HEADERS {
                        return Err(bad("chunk trailers count overflow"));
                    }
                    self.trailers += 1;
                    keep(trailers.get_or_insert_with(BytesMut::new), b)?;
                    EndCr
                }
                (TrailerLf, _) => return Err(bad("invalid trailer end LF")),
                (EndLf, b'\n') => {
                    if let Some(t) = trailers {
                        keep(t, b)?;
                    }
                    return Ok(Step::End);
                }
                (EndLf, _) => return Err(bad("invalid chunk end LF")),
                (Body, _) => unreachable!("handled above"),
            };
        }
        Ok(Step::More)
    }
}

/// Where [`Chunked::step`] stopped.
enum Step {
    /// The buffer's first bytes, this many, are body data.
    Data(usize),
    End,
    /// The buffer ran out.
    More,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Reader<I> {
    /// Reads more into the buffer; `Ok(0)` at the client's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
            self.grown = true;
        }
        tokio_util::io::poll_read_buf(Pin::new(self.io.get_mut()), cx, &mut self.buf)
    }

    /// The next piece of the body: from the buffer, else read (when
    /// `read`; without it, `Pending` means the buffer holds no more).
    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        read: bool,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            match &mut self.body {
                Framing::Done => return Poll::Ready(None),
                Framing::Failed => {
                    return Poll::Ready(Some(Err(bad("the request body failed before"))));
                }
                Framing::Length(left) if !self.buf.is_empty() => {
                    let n = (self.buf.len() as u64).min(*left) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.body = Framing::Done;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(self.buf.split_to(n).freeze()))));
                }
                Framing::Length(_) => {}
                Framing::Chunked(c) => match c.step(&mut self.buf, &mut self.trailers) {
                    Err(e) => {
                        self.body = Framing::Failed;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Ok(Step::End) => {
                        self.body = Framing::Done;
                        let Some(section) = self.trailers.take() else {
                            return Poll::Ready(None);
                        };
                        // A field hyper cannot make fails the body.
                        return Poll::Ready(Some(match trailer_map(&section) {
                            Some(trailers) => Ok(Frame::trailers(trailers)),
                            None => {
                                self.body = Framing::Failed;
                                Err(bad("invalid trailer section"))
                            }
                        }));
                    }
                    Ok(Step::Data(n)) => {
                        return Poll::Ready(Some(Ok(Frame::data(self.buf.split_to(n).freeze()))));
                    }
                    Ok(Step::More) => {}
                },
            }
            if !read {
                return Poll::Pending;
            }
            match self.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    self.body = Framing::Failed;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed before the end of its body",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.body = Framing::Failed;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    /// Whether what the buffer holds finishes the body (read and
    /// dropped): the connection can then carry another request.
    fn drain_buffered(&mut self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        loop {
            match self.poll_body(&mut cx, false) {
                Poll::Ready(None) => return true,
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(_))) | Poll::Pending => return false,
            }
        }
    }
}

struct Shared<I> {
    reader: ConnLock<Reader<I>>,
    /// Set with `continue_wanted` when the body is first read with an
    /// `Expect: 100-continue` open.
    continue_owed: AtomicBool,
    continue_wanted: Notify,
}

impl<I> Shared<I> {
    fn reader(&self) -> conn_lock::Guard<'_, Reader<I>> {
        self.reader.lock()
    }
}

/// A request's body, read off the client's connection.
struct H1Body<I> {
    shared: Arc<Shared<I>>,
    /// Its request's [`Reader::request`].
    request: u64,
    /// What is left, as last seen (for `is_end_stream` and `size_hint`).
    left: Framing,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Body for H1Body<I> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let mut reader = this.shared.reader();
        if reader.detached || reader.request != this.request {
            return Poll::Ready(Some(Err(bad("the response ended before the request body"))));
        }
        if std::mem::take(&mut reader.expect) {
            this.shared.continue_owed.store(true, Ordering::Relaxed);
            this.shared.continue_wanted.notify_one();
        }
        let polled = reader.poll_body(cx, true);
        this.left = reader.body;
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.left, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// A parsed head, or why there is none.
enum Head {
    /// Parsed into the caller's slot: a request's head (about 250 bytes)
    /// made where it is read, not moved through each step's return and
    /// `select!`'s output (four copies a request).
    Request,
    /// hyper's answer to a head it cannot parse (400, 431), then close.
    Refused(StatusCode),
    /// The request line cannot end within [`MAX_HEAD`]: 414, then close.
    LineTooLong,
    /// Hand the connection, from these bytes on, to hyper.
    Hyper,
    /// The client closed (or its connection failed) between requests.
    Closed,
}

struct Parsed {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
    expect: bool,
    /// `TE: trailers`: hyper's rule, response trailers only to a client
    /// that said it takes them.
    takes_trailers: bool,
    /// Fields of the names passed unread, not in `headers`.
    unread: Option<Box<Unread>>,
    /// The request's one `Host`, when it is its first field: not in
    /// `headers` (see `upstream::Added::host`).
    host: Option<HeaderValue>,
}

/// Parses the head at the start of `buf`: `None` while incomplete; a
/// request goes into `out`. Its headers go into `map` (empty; taken only
/// when the head is complete), but for those of the names in
/// `unread_names`, which go into its `unread` (none where a `Connection`
/// names fields, for the stripping).
fn parse(
    buf: &mut BytesMut,
    first: bool,
    map: &mut HeaderMap,
    unread_names: UnreadNames,
    out: &mut Option<Parsed>,
) -> Option<Head> {
    if first && buf.len() < PREFACE.len() && PREFACE.starts_with(buf) {
        return None;
    }
    if first && buf.starts_with(PREFACE) {
        return Some(Head::Hyper);
    }
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let bytes: &[u8] = buf;
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        bytes,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => {
            return Some(Head::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        }
        Err(_) => return Some(Head::Refused(StatusCode::BAD_REQUEST)),
    };
    let base = bytes.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Some(Head::Refused(StatusCode::BAD_REQUEST));
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Some(Head::Refused(StatusCode::BAD_REQUEST));
    };
    let path = range(path.as_bytes());
    let http11 = minor == 1;
    let mut unread_names = unread_names;
    let mut hosts = 0u32;
    for h in req.headers.iter() {
        match h.name.len() {
            4 if folded_eq(h.name.as_bytes(), b"host") => hosts += 1,
            7 if http11 && folded_eq(h.name.as_bytes(), b"upgrade") => return Some(Head::Hyper),
            // The fields it names are stripped from the map: all go there,
            // in the order they came, as hyper's server puts them.
            10 if folded_eq(h.name.as_bytes(), b"connection") && !names_no_field(h.value) => {
                unread_names = UnreadNames::NONE;
            }
            _ => {}
        }
    }
    // Pushed, not collected, and read in place below (as the backend
    // client's response fields): `collect` and the loop each copied the
    // whole list. A head's offsets fit `u32`.
    let mut fields: smallvec::SmallVec<[[u32; 4]; 16]> = smallvec::SmallVec::new();
    for h in req.headers.iter() {
        let (name, value) = (range(h.name.as_bytes()), range(h.value));
        fields.push([name.start, name.end, value.start, value.end].map(|i| i as u32));
    }
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path)) else {
        return Some(Head::Refused(StatusCode::BAD_REQUEST));
    };
    let mut keep_alive = http11;
    let mut framing = Framing::Done;
    let mut length = None;
    let (mut is_te, mut is_cl, mut chunked, mut close, mut expect) =
        (false, false, false, false, false);
    let mut takes_trailers = false;
    let mut map = std::mem::take(map);
    map.reserve(fields.len());
    let mut unread: Option<Box<Unread>> = None;
    let mut host = None;
    let mut fields = &fields[..];
    if hosts == 1
        && let Some((&[n0, n1, v0, v1], rest)) = fields.split_first()
        && n1 - n0 == 4
        && folded_eq(&head[n0 as usize..n1 as usize], b"host")
    {
        host = Some(parsed_value(head.slice(v0 as usize..v1 as usize)));
        fields = rest;
    }
    for &[n0, n1, v0, v1] in fields {
        let passable = if unread_names.is_empty() {
            None
        } else {
            UnreadName::of(&head[n0 as usize..n1 as usize])
        };
        if let Some(name) = passable
            && unread_names.contains(name)
        {
            unread
                .get_or_insert_with(|| Unread::new(head.clone()))
                .push(name, [v0, v1]);
            continue;
        }
        let [n0, n1, v0, v1] = [n0, n1, v0, v1].map(|i| i as usize);
        // A passable name the config reads: matched once, above.
        let name = match passable {
            Some(name) => name.header_name().clone(),
            None => match field_name(&head[n0..n1]) {
                Ok(name) => name,
                Err(_) => return Some(Head::Refused(StatusCode::BAD_REQUEST)),
            },
        };
        let value = parsed_value(head.slice(v0..v1));
        // hyper's rules (`proto::h1::role`), in its order.
        match name {
            header::TRANSFER_ENCODING => {
                if !http11 {
                    return Some(Head::Refused(StatusCode::BAD_REQUEST));
                }
                is_te = true;
                if is_cl && length.take().is_some() {
                    map.remove(header::CONTENT_LENGTH);
                }
                chunked = last_token_is_chunked(value.as_bytes());
                if chunked {
                    framing = Framing::Chunked(Chunked::new());
                }
            }
            header::CONTENT_LENGTH => {
                is_cl = true;
                if is_te {
                    continue;
                }
                let Some(n) = request_length(value.as_bytes()) else {
                    return Some(Head::Refused(StatusCode::BAD_REQUEST));
                };
                match length {
                    Some(prev) if prev != n => return Some(Head::Refused(StatusCode::BAD_REQUEST)),
                    Some(_) => continue,
                    None => {}
                }
                if n >= u64::MAX - 1 {
                    return Some(Head::Refused(StatusCode::BAD_REQUEST));
                }
                framing = if n == 0 {
                    Framing::Done
                } else {
                    Framing::Length(n)
                };
                length = Some(n);
            }
            header::CONNECTION => {
                if close || has_token(value.as_bytes(), b"close") {
                    close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(value.as_bytes(), b"keep-alive");
                }
            }
            header::EXPECT => {
                expect = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            header::TE => {
                takes_trailers |= crate::upstream::h1::has_token(&value, "trailers");
            }
            _ => {}
        }
        map.append(name, value);
    }
    if is_te && !chunked {
        return Some(Head::Refused(StatusCode::BAD_REQUEST));
    }
    if is_te && is_cl {
        keep_alive = false;
    }
    *out = Some(Parsed {
        method,
        uri,
        version: if http11 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        },
        headers: map,
        framing,
        keep_alive,
        expect: expect && http11,
        takes_trailers,
        unread,
        host,
    });
    Some(Head::Request)
}

/// A request's `Content-Length` as hyper's server reads it: digits only,
/// as many as fit `u64`. Not [`content_length_value`], which takes a list
/// of equal values (`5, 5`) as one, as clients read answers: a request
/// carrying one was forwarded with the list as it came (found by the
/// generated differential in `tests/h1server.rs`), and each backend reads
/// such a list its own way: one that took it for no length would read
/// the body as its next request.
fn request_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn last_token_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Serves `io` until it ends; `Some`: what is left of it, for hyper.
/// `splice`: response bodies may be spliced from backend sockets into it.
/// `unread`: the names whose fields requests pass on unread (the
/// listener's when the connection came; a request checks them again
/// against a reloaded config).
// Not an async fn: one keeps its arguments for its whole life, and `io`
// is split here into the halves that own it (kept as an argument, a TLS
// stream's 1,224 bytes stayed in every connection's task beside them).
pub(super) fn serve<I, C: Client>(
    io: I,
    conn: Arc<C>,
    timeouts: Timeouts,
    splice: bool,
    unread: UnreadNames,
) -> impl Future<Output = Option<Rewind<I>>> + Send + use<I, C>
where
    I: AsyncRead + AsyncWrite + Socket + Unpin + Send + 'static,
{
    // Not `timeouts` itself, which would then be kept whole while the
    // connection is served (64 bytes of every connection's state).
    let (idle, header) = (timeouts.idle, timeouts.header);
    let activity = conn.activity().clone();
    let (read, write) = super::halves::split(TrackedIo::new(io, activity.clone()));
    async move {
        let conn = &conn;
        // The task that reads the client: the one the read gate wakes.
        let task = poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let shared = Arc::new(Shared {
            reader: ConnLock::new(Reader {
                io: GatedRead::new(read, task),
                buf: BytesMut::new(),
                body: Framing::Done,
                detached: false,
                expect: false,
                request: 0,
                grown: false,
                trailers: None,
            }),
            continue_owed: AtomicBool::new(false),
            continue_wanted: Notify::new(),
        });
        let mut writer = Writer {
            splice: splice && write.is_tcp(),
            io: write,
            // Grown by the first response to what heads need, then kept.
            head: Vec::new(),
        };
        let served = {
            let requests = requests(&shared, &mut writer, conn, unread);
            let watchdog = std::pin::pin!(activity.watchdog(Some(header), idle));
            // Waking only when its timer fires: see `woken`. In order, with
            // no random number drawn at each of a request's polls.
            tokio::select! {
                biased;
                served = requests => served,
                reason = Woken::new(watchdog) => {
                    tracing::debug!(client = %conn.peer(), reason, "client connection cut");
                    Served::Closed
                }
            }
        };
        let linger = match served {
            Served::Closed => false,
            Served::Lingering => true,
            Served::Hyper => {
                let shared = Arc::into_inner(shared)?;
                let reader = shared.reader.into_inner();
                let io = reader.io.into_inner().unsplit(writer.io)?.into_inner();
                return Some(Rewind {
                    prefix: reader.buf.freeze(),
                    inner: io,
                });
            }
        };
        close(&shared, &mut writer.io, linger, idle, conn.shutdown()).await;
        None
    }
}

enum Served {
    Closed,
    /// Closed after an answer while the client may still be sending.
    Lingering,
    Hyper,
}

/// Ends a connection: its write side first, and with `linger` (an answer
/// given while the client may still be sending: the rest of a body, of a
/// refused head) the client's bytes read and dropped for a while (see
/// `linger`).
async fn close<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<I>,
    write: &mut WriteHalf<TrackedIo<I>>,
    linger: bool,
    idle: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) {
    if !super::linger::shut_down(write, idle, shutdown).await || !linger {
        return;
    }
    let mut linger = super::linger::Linger::new(idle, shutdown.clone());
    poll_fn(|cx| {
        let mut reader = shared.reader();
        linger.poll_drain(cx, Pin::new(reader.io.get_mut()))
    })
    .await;
}

async fn requests<I, C: Client>(
    shared: &Arc<Shared<I>>,
    writer: &mut Writer<I>,
    conn: &Arc<C>,
    unread_names: UnreadNames,
) -> Served
where
    I: AsyncRead + AsyncWrite + Socket + Unpin + Send + 'static,
{
    let shutdown = conn.shutdown();
    let mut first = true;
    // hyper's habit: the map of a response, emptied, takes the next
    // request's headers (two allocations fewer per request).
    let mut spare = HeaderMap::new();
    // One waiter for the connection's life rather than one registered and
    // unlinked per request.
    let cancelled = std::pin::pin!(shutdown.cancelled());
    let mut cancelled = Woken::new(cancelled);
    // Set by each request to its deadline, when it would go off later
    // (see `Client::respond`); unset until the first.
    let timer = super::answer_timer::AnswerTimer::new(tokio::time::sleep(Duration::MAX));
    tokio::pin!(timer);
    let mut parsed = None;
    loop {
        let head = {
            let next =
                poll_fn(|cx| next_head(shared, cx, first, &mut spare, unread_names, &mut parsed));
            tokio::pin!(next);
            // In order: no random number drawn a request for fairness
            // that two branches, one of them once-only, do not need.
            tokio::select! {
                biased;
                head = &mut next => head,
                // Between requests a stopping listener closes the
                // connection; its first request is answered first.
                () = &mut cancelled, if !first => {
                    if shared.reader().buf.is_empty() {
                        return Served::Closed;
                    }
                    next.await
                }
            }
        };
        let parsed = match head {
            Head::Request => parsed.take().expect("parsed into its slot"),
            Head::Hyper => {
                if first && shared.reader().buf.starts_with(PREFACE) {
                    conn.activity().speaks_h2();
                }
                return Served::Hyper;
            }
            Head::Closed => return Served::Closed,
            Head::LineTooLong => {
                tracing::debug!(client = %conn.peer(), "request line over {MAX_HEAD} bytes: 414");
                let _ = writer.io.write_all(URI_TOO_LONG).await;
                return Served::Lingering;
            }
            Head::Refused(status) => {
                tracing::debug!(client = %conn.peer(), status = status.as_u16(), "request head refused");
                let _ = writer.refuse(status).await;
                return Served::Lingering;
            }
        };
        first = false;
        let Parsed {
            method,
            uri,
            version,
            headers,
            framing,
            keep_alive,
            expect,
            takes_trailers,
            unread,
            host,
        } = parsed;
        // Only such a request waits on the body's first read to send a 100
        // Continue; others do not register with the notifier at all.
        let may_continue = expect && !matches!(framing, Framing::Done);
        let body = if matches!(framing, Framing::Done) {
            RequestBody::Empty
        } else {
            let mut reader = shared.reader();
            reader.body = framing;
            reader.trailers = None;
            reader.detached = false;
            reader.expect = expect;
            reader.request += 1;
            RequestBody::Own(Box::pin(H1Body {
                shared: shared.clone(),
                request: reader.request,
                left: framing,
            }))
        };
        // Made in its place: a request made first was moved into it.
        let (body, body_progress) = crate::upstream::lent_body(body);
        let mut lent = Some(Request::new(body));
        // Not `if let`: the URI and map, moved on one path only, kept
        // their places in every later state of this future (2,784
        // bytes, 2,600 without them: `-Zprint-type-sizes`).
        let req = lent.as_mut().expect("made above");
        *req.method_mut() = method.clone();
        // The URI it replaces, `Request::new`'s "/", is static bytes
        // only: let go without its drop glue (22 instructions).
        std::mem::forget(std::mem::replace(req.uri_mut(), uri));
        *req.version_mut() = version;
        crate::upstream::put_headers(req.headers_mut(), headers);
        // The response ends where it stands, at the end of this block,
        // rather than moved into a `drop`.
        let reusable = {
            // Boxed, as hyper's server boxes it: the routing and forwarding
            // state (2.5 KB at 709a6a0) exists only while a request is open,
            // not in every idle connection's task. Its memory is the
            // thread's, kept for the next request's.
            //
            // The future puts its answer (the response, 504 bytes) in
            // `out`: returned, it was moved four times on its way (as the
            // async fn's value, into a `MaybeDone` and within it: 300
            // instructions a request, by `benches/callgrind_inlined.py`).
            // `out` is in this task's memory, which with many connections
            // open is cold by the time the connection's next request
            // comes; but in a block of the thread's, as the future is, it
            // cost as many instructions as it saved (a block taken and
            // given back: 100), and with 1,000 connections the misses of
            // the L2 cache were the same either way (213.9 and 224.3 a
            // request here, 216.2 and 220.5 with the answer in the
            // future's box: `CACHE=1 CACHE_LL=1048576,8,64 CONNS=1000
            // DURATION=20 benches/instructions.sh`, twice each).
            let mut out = None;
            let mut answer = crate::spares::Recycled::pin_in_place(|| {
                conn.respond(
                    &mut lent,
                    body_progress,
                    unread,
                    host,
                    timer.as_mut(),
                    &mut out,
                )
            });
            loop {
                // The answer first: when the backend's reply woke the
                // task, the client's socket is not read again for nothing
                // (0.67 reads a request that find nothing, by
                // `benches/instructions.sh`).
                tokio::select! {
                    biased;
                    // Its box fetched whole first: when the backend's
                    // answer wakes the task, it has gone cold (`prefetch`).
                    () = poll_fn(|cx| {
                        super::prefetch(&*answer);
                        answer.as_mut().poll(cx)
                    }) => break,
                    () = shared.continue_wanted.notified(), if may_continue => {
                        if shared.continue_owed.swap(false, Ordering::Relaxed)
                            && writer.io.write_all(CONTINUE).await.is_err()
                        {
                            return Served::Closed;
                        }
                    }
                    // geolb serves without half-close (as its hyper
                    // server): a client that ends its side has gone.
                    closed = poll_fn(|cx| client_gone(shared, cx)) => {
                        if closed {
                            return Served::Closed;
                        }
                    }
                }
            }
            // Done: its block goes back to the thread's shelf.
            drop(answer);
            let Some((resp, request_id)) = &mut out else {
                return Served::Closed;
            };
            // The token asked (under its mutex: 33 instructions) only if
            // its watcher could have seen it go off.
            let keep_alive = keep_alive && !(cancelled.may_be_ready() && shutdown.is_cancelled());
            let request = Answering {
                method: &method,
                version,
                keep_alive,
                takes_trailers,
                request_id: request_id.as_ref(),
            };
            super::after_woken_tasks().await;
            // Pinned where it is made, not moved into the await.
            let reusable = std::pin::pin!(writer.respond(resp, request)).await;
            // Swapped: the map parse left in `spare` is empty, and dropping
            // it cost as much as a map's drop.
            std::mem::swap(&mut spare, resp.headers_mut());
            reusable
        };
        crate::upstream::clear_headers(&mut spare);
        let mut reader = shared.reader();
        reader.detached = true;
        reader.expect = false;
        shared.continue_owed.store(false, Ordering::Relaxed);
        if !reusable || !reader.drain_buffered() {
            // The client may still be sending its body or a next request.
            let unread = !matches!(reader.body, Framing::Done);
            return match unread || !reader.buf.is_empty() {
                true => Served::Lingering,
                false => Served::Closed,
            };
        }
    }
}

/// Whether the client closed its side while its request is open with
/// its body read; pending (reading ahead what it pipelines, up to
/// [`MAX_HEAD`]) otherwise.
fn client_gone<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<I>,
    cx: &mut Context<'_>,
) -> Poll<bool> {
    let mut reader = shared.reader();
    if !matches!(reader.body, Framing::Done) || reader.buf.len() >= MAX_HEAD {
        // The body's reader sees the end; and a client pipelining more
        // than a head waits.
        return Poll::Pending;
    }
    // Waiting on the backend, the connection holds no read buffer.
    let room = MAX_HEAD - reader.buf.len();
    let r = &mut *reader;
    let read = r.io.poll_gated(cx, |io, cx| {
        poll_read_exact_size(Pin::new(io), cx, &mut r.buf, room)
    });
    match read {
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(true),
        Poll::Ready(Ok(_)) => {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        Poll::Pending => Poll::Pending,
    }
}

fn next_head<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<I>,
    cx: &mut Context<'_>,
    first: bool,
    spare: &mut HeaderMap,
    unread: UnreadNames,
    parsed: &mut Option<Parsed>,
) -> Poll<Head> {
    let mut reader = shared.reader();
    loop {
        if !reader.buf.is_empty() {
            if let Some(head) = parse(&mut reader.buf, first, spare, unread, parsed) {
                return Poll::Ready(head);
            }
            if reader.buf.len() >= MAX_HEAD {
                // hyper's 431, or 414 for a line that alone fills it.
                return Poll::Ready(if reader.buf.contains(&b'\n') {
                    Head::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
                } else {
                    Head::LineTooLong
                });
            }
        }
        let room = MAX_HEAD - reader.buf.len();
        let r = &mut *reader;
        if r.grown && r.buf.is_empty() {
            r.buf = BytesMut::new();
            r.grown = false;
        }
        let read = r.io.poll_gated(cx, |io, cx| {
            poll_read_exact_size(Pin::new(io), cx, &mut r.buf, room)
        });
        match read {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Head::Closed),
            Poll::Ready(Ok(_)) => {}
        }
    }
}

/// What the writer does with a frame of the response's body.
enum BodyStep {
    Data(Bytes),
    /// An empty frame, or one neither data nor trailers.
    Skip,
    /// The body's end, with the trailer section to write (empty for
    /// none).
    End(Vec<u8>),
    Failed,
}

// Inlined: a call of its own cost 31 instructions a request.
#[inline(always)]
fn next_body_step(
    frame: Option<Result<Frame<Bytes>, super::body::BoxError>>,
    body: &mut ResponseBody,
    encoder: Encoder,
    takes_trailers: bool,
    trailer_names: &[HeaderName],
) -> BodyStep {
    match frame {
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) if !data.is_empty() => BodyStep::Data(data),
            Ok(_) => BodyStep::Skip,
            Err(frame) => {
                let Ok(trailers) = frame.into_trailers() else {
                    return BodyStep::Skip;
                };
                // hyper ends the body at its trailers, sent or not.
                drop(std::mem::replace(body, ResponseBody::empty()));
                let mut section = Vec::new();
                if encoder == Encoder::Chunked && takes_trailers {
                    trailer_section(&mut section, trailers, trailer_names);
                }
                BodyStep::End(section)
            }
        },
        None => BodyStep::End(Vec::new()),
        Some(Err(e)) => {
            // A head not yet written stays unwritten (as hyper's): the
            // client sees the connection close, not a response cut short.
            tracing::debug!(error = %e, "response body failed: connection closed");
            BodyStep::Failed
        }
    }
}

/// What a response answers.
#[derive(Clone, Copy)]
struct Answering<'a> {
    method: &'a Method,
    version: Version,
    keep_alive: bool,
    /// `TE: trailers`.
    takes_trailers: bool,
    /// Written after the response's own fields (see `Reply::finish`).
    request_id: Option<&'a RequestId>,
}

/// The write side: responses encoded as hyper's server does.
struct Writer<I> {
    io: WriteHalf<TrackedIo<I>>,
    /// The head being written, kept for its capacity.
    head: Vec<u8>,
    /// Response bodies may be spliced into the connection (see
    /// `splice_body`).
    splice: bool,
}

/// How the body of a response goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoder {
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a length: the end of the connection ends it.
    Close,
}

impl<I: AsyncRead + AsyncWrite + Socket + Unpin> Writer<I> {
    /// hyper's automatic answer to a head it cannot parse.
    async fn refuse(&mut self, status: StatusCode) -> io::Result<()> {
        self.head.clear();
        self.head.extend_from_slice(b"HTTP/1.1 ");
        self.head.extend_from_slice(status.as_str().as_bytes());
        self.head.push(b' ');
        self.head
            .extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        self.head
            .extend_from_slice(b"\r\nconnection: close\r\ncontent-length: 0\r\ndate: ");
        date(&mut self.head);
        self.head.extend_from_slice(b"\r\n\r\n");
        self.io.write_all(&self.head).await
    }

    /// Writes `resp` to `request`; true if the connection may carry
    /// another request. By reference: the response (456 bytes) stays where
    /// the connection's loop put it, rather than being moved into this
    /// future and split there (five copies a request).
    async fn respond(&mut self, resp: &mut Response<ResponseBody>, request: Answering<'_>) -> bool {
        let Answering {
            method,
            version,
            mut keep_alive,
            takes_trailers,
            mut request_id,
        } = request;
        let read = resp.body_mut().take_read_fields();
        // hyper's `enforce_version` and `fix_keep_alive`.
        let mut out_version = resp.version();
        if version == Version::HTTP_10 {
            let says_keep_alive = resp
                .headers()
                .get_all(header::CONNECTION)
                .iter()
                .any(|v| has_token(v.as_bytes(), b"keep-alive"));
            if !says_keep_alive {
                if resp.version() == Version::HTTP_10 {
                    keep_alive = false;
                } else if resp.version() == Version::HTTP_11 && keep_alive {
                    add_connection(resp, "keep-alive", &mut request_id);
                }
            }
            out_version = Version::HTTP_10;
        } else if !keep_alive
            && !resp
                .headers()
                .get_all(header::CONNECTION)
                .iter()
                .any(|v| has_token(v.as_bytes(), b"close"))
        {
            add_connection(resp, "close", &mut request_id);
        }
        let length = if resp.body().is_end_stream() {
            None
        } else {
            Some(resp.body().size_hint().exact())
        };
        self.head.clear();
        let (encoder, last, trailer_names) = encode_head(
            &mut self.head,
            resp,
            read.as_deref(),
            request_id,
            out_version,
            method,
            length,
            !keep_alive,
        );
        if let Some(read) = read {
            read.recycle();
        }
        let body = resp.body_mut();
        if encoder == Encoder::Length(0) {
            // Ended (counted, logged, its backend connection given back)
            // before the head goes out, as every body is by its last read.
            drop(std::mem::replace(body, ResponseBody::empty()));
            return self.io.write_all(&self.head).await.is_ok() && !last;
        }
        let mut wrote_head = false;
        let mut left = encoder;
        let mut splice = self.splice;
        loop {
            if let Encoder::Length(rest @ 1..) = &mut left
                && wrote_head
                && splice
                && body.reads_raw()
            {
                match self.splice_body(body, rest).await {
                    Some(true) => return keeps_open(encoder, left, last),
                    Some(false) => return false,
                    None => splice = false,
                }
            }
            // A backend's chunks to a client taking chunks: as they came,
            // all that a read brought in one write.
            if encoder == Encoder::Chunked && body.reads_chunks_raw() {
                let raw = if wrote_head {
                    poll_fn(|cx| body.poll_raw_chunks(cx)).await
                } else {
                    match poll_fn(|cx| Poll::Ready(body.poll_raw_chunks(cx))).await {
                        Poll::Ready(raw) => raw,
                        Poll::Pending => {
                            if self.io.write_all(&self.head).await.is_err() {
                                return false;
                            }
                            wrote_head = true;
                            continue;
                        }
                    }
                };
                match raw {
                    Ok(RawChunks::Bytes(raw, _)) => {
                        let end = body.is_end_stream();
                        let head: &[u8] = if wrote_head { &[] } else { &self.head };
                        let mut slices = [IoSlice::new(head), IoSlice::new(&raw)];
                        if write_all(&mut self.io, &mut slices).await.is_err() {
                            return false;
                        }
                        wrote_head = true;
                        if end {
                            return keeps_open(encoder, left, last);
                        }
                        continue;
                    }
                    Ok(RawChunks::Frames) => {}
                    Err(e) => {
                        // As a failing frame: the backend client gives its
                        // failure a poll after it, and the head, pending
                        // then, goes out before the close.
                        if !wrote_head {
                            let _ = self.io.write_all(&self.head).await;
                        }
                        tracing::debug!(error = %e, "response body failed: connection closed");
                        return false;
                    }
                }
            }
            // The head goes out with the first bytes when they are there,
            // alone when they are not.
            let frame = if wrote_head {
                poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            } else {
                match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        if self.io.write_all(&self.head).await.is_err() {
                            return false;
                        }
                        wrote_head = true;
                        continue;
                    }
                }
            };
            // Taken apart before any `.await`: the frame, moved out of
            // in parts, kept its place (and its trailers theirs) in the
            // states after (this future 760 bytes, 504 without them).
            let data = match next_body_step(
                frame,
                body,
                encoder,
                takes_trailers,
                trailer_names.as_deref().unwrap_or_default(),
            ) {
                BodyStep::Data(data) => data,
                BodyStep::Skip => continue,
                BodyStep::End(section) => {
                    return self.finish(wrote_head, encoder, left, last, &section).await;
                }
                BodyStep::Failed => return false,
            };
            let mut data = data;
            if let Encoder::Length(n) = &mut left {
                // Never more than the length said.
                data.truncate((*n).min(data.len() as u64) as usize);
                *n -= data.len() as u64;
            }
            let end = body.is_end_stream();
            let mut size = [0u8; 20];
            let (prefix, suffix): (&[u8], &[u8]) = match encoder {
                Encoder::Chunked => {
                    let n = chunk_size(&mut size, data.len());
                    (&size[..n], if end { b"\r\n0\r\n\r\n" } else { b"\r\n" })
                }
                _ => (&[], &[]),
            };
            let head: &[u8] = if wrote_head { &[] } else { &self.head };
            let mut slices = [
                IoSlice::new(head),
                IoSlice::new(prefix),
                IoSlice::new(&data),
                IoSlice::new(suffix),
            ];
            if write_all(&mut self.io, &mut slices).await.is_err() {
                return false;
            }
            wrote_head = true;
            if end {
                return keeps_open(encoder, left, last);
            }
        }
    }

    /// Splices the rest of `body` (`left` bytes, all from a backend's
    /// socket) into the client's through a pipe, never copying it into
    /// geolb: the kernel moves its pages. `None` when nothing could be
    /// moved so (no pipe to be had, or a kernel that cannot splice these
    /// sockets): the body goes on as frames. Else whether all of it went
    /// out; a failure on either side ends the connection, as a failed
    /// frame does.
    async fn splice_body(&mut self, body: &mut ResponseBody, left: &mut u64) -> Option<bool> {
        let mut pipe = Pipe::get()?;
        let mut moved = false;
        while *left > 0 {
            let most = usize::try_from(*left).unwrap_or(usize::MAX);
            let into = pipe.write.as_fd();
            let read = poll_fn(|cx| {
                body.poll_read_raw(cx, |socket, len| {
                    Ok(nix::fcntl::splice(
                        socket,
                        None,
                        into,
                        None,
                        len.min(most),
                        SPLICE_FLAGS,
                    )?)
                })
            })
            .await;
            let n = match read {
                Ok(n) => n,
                Err(e) if !moved && unsupported(&e) => {
                    pipe.release();
                    return None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "response body failed: connection closed");
                    return Some(false);
                }
            };
            moved = true;
            *left -= n as u64;
            pipe.pending = n;
            while pipe.pending > 0 {
                let out = pipe.read.as_fd();
                match poll_fn(|cx| self.io.poll_splice_from(cx, out, pipe.pending)).await {
                    Ok(n) if n > 0 => pipe.pending -= n,
                    // The pipe still holds bytes: closed, not reused.
                    Ok(_) | Err(_) => return Some(false),
                }
            }
            // tokio's readiness and `try_io` spend no budget: a backend
            // that never runs dry would otherwise hold the thread.
            tokio::task::consume_budget().await;
        }
        pipe.release();
        Some(true)
    }

    /// Ends a response whose body ended after its data (with or without
    /// trailers): the head if it is not written yet and, for chunked
    /// framing, the last chunk, `trailers` when they hold one (a last
    /// chunk with its fields); whether the connection may carry another
    /// request.
    async fn finish(
        &mut self,
        wrote_head: bool,
        encoder: Encoder,
        left: Encoder,
        last: bool,
        trailers: &[u8],
    ) -> bool {
        let tail: &[u8] = match encoder {
            Encoder::Chunked if !trailers.is_empty() => trailers,
            Encoder::Chunked => b"0\r\n\r\n",
            _ => b"",
        };
        let head: &[u8] = if wrote_head { &[] } else { &self.head };
        if write_all(&mut self.io, &mut [IoSlice::new(head), IoSlice::new(tail)])
            .await
            .is_err()
        {
            return false;
        }
        keeps_open(encoder, left, last)
    }
}

/// A `Connection` field the server adds, after the request id as hyper's
/// server has it: the id goes into the map first (only such answers pay
/// for its insert).
fn add_connection(
    resp: &mut Response<ResponseBody>,
    token: &'static str,
    request_id: &mut Option<&RequestId>,
) {
    let headers = resp.headers_mut();
    if let Some(id) = request_id.take() {
        put_request_id(headers, id);
    }
    headers.append(header::CONNECTION, HeaderValue::from_static(token));
}

/// Whether a connection whose response went out `encoder`-framed, with
/// `left` of its length unsent, may carry another request: not after a
/// body shorter than its length (the client would wait for bytes that
/// never come), nor one ended by closing.
fn keeps_open(encoder: Encoder, left: Encoder, last: bool) -> bool {
    let short = matches!(left, Encoder::Length(n) if n > 0);
    !last && !short && encoder != Encoder::Close
}

/// `{len:X}\r\n` into `buf`; its length.
fn chunk_size(buf: &mut [u8; 20], len: usize) -> usize {
    use std::io::Write;
    let mut w = &mut buf[..];
    let _ = write!(w, "{len:X}\r\n");
    20 - w.len()
}

async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

fn can_chunked(method: &Method, status: StatusCode) -> bool {
    !(method == Method::HEAD
        || method == Method::CONNECT && status.is_success()
        || status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
}

fn can_have_content_length(method: &Method, status: StatusCode) -> bool {
    !(status.is_informational()
        || method == Method::CONNECT && status.is_success()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
}

/// hyper's `Server::encode` with lower-case names: the head of `resp`
/// into `dst`, how its body goes, whether the connection ends after, and
/// the fields its `Trailer` header announces (`None` without one: an
/// empty list's drop was a call a response). A backend's fields kept as
/// read (`read`) come first, as they would from the map.
/// `length`: `None` for no body, `Some(None)` for one of unknown length.
#[allow(clippy::too_many_arguments)]
fn encode_head<B>(
    dst: &mut Vec<u8>,
    resp: &Response<B>,
    read: Option<&ReadFields>,
    request_id: Option<&RequestId>,
    version: Version,
    method: &Method,
    length: Option<Option<u64>>,
    last: bool,
) -> (Encoder, bool, Option<Vec<HeaderName>>) {
    let status = resp.status();
    let reason = resp.extensions().get::<hyper::ext::ReasonPhrase>();
    if version == Version::HTTP_11 && status == StatusCode::OK && reason.is_none() {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if version == Version::HTTP_10 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        match reason {
            Some(r) => dst.extend_from_slice(r.as_bytes()),
            None => dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        dst.extend_from_slice(b"\r\n");
    }
    let mut head = HeadFields {
        length,
        method,
        chunkable: version != Version::HTTP_10 && can_chunked(method, status),
        encoder: Encoder::Length(0),
        wrote_len: false,
        wrote_date: false,
        open: None,
        prev_len: None,
        last,
        announces_trailers: false,
    };
    // A read head's names differ from field to field, or its fields come
    // together: each field closes an open line.
    if let Some(read) = read {
        read.each(|kind, name, value, line| {
            head.close_line(dst);
            let plain = match kind {
                FieldKind::ContentLength => head.content_length(dst, value, true),
                FieldKind::Date => {
                    head.wrote_date = true;
                    true
                }
                _ => true,
            };
            if plain {
                let at = dst.len();
                match line {
                    Some(line) => dst.extend_from_slice(line),
                    None => put_field(dst, name, value),
                }
                lowercase_at(dst, at, name.len());
            }
        });
    }
    let mut current: Option<&HeaderName> = None;
    for (name, value) in resp.headers() {
        let new_name = current != Some(name);
        if new_name {
            current = Some(name);
            head.close_line(dst);
        }
        let value = value.as_bytes();
        let plain = match *name {
            header::CONTENT_LENGTH => head.content_length(dst, value, new_name),
            header::TRANSFER_ENCODING => {
                if head.chunkable {
                    head.wrote_len = true;
                    let must_chunk = !last_token_is_chunked(value);
                    if new_name {
                        head.encoder = Encoder::Chunked;
                        dst.extend_from_slice(b"transfer-encoding: ");
                    } else {
                        dst.extend_from_slice(b", ");
                    }
                    dst.extend_from_slice(value);
                    head.open = Some(must_chunk);
                }
                false
            }
            header::CONNECTION => {
                if has_token(value, b"close") {
                    head.last = true;
                }
                dst.extend_from_slice(if new_name { b"connection: " } else { b", " });
                dst.extend_from_slice(value);
                head.open = Some(false);
                false
            }
            header::TRAILER => {
                if head.chunkable {
                    dst.extend_from_slice(if new_name { b"trailer: " } else { b", " });
                    dst.extend_from_slice(value);
                    head.open = Some(false);
                    head.announces_trailers = true;
                }
                false
            }
            header::DATE => {
                head.wrote_date = true;
                true
            }
            _ => true,
        };
        if plain {
            put_field(dst, name.as_str().as_bytes(), value);
        }
    }
    head.close_line(dst);
    let HeadFields {
        mut encoder,
        wrote_len,
        wrote_date,
        last,
        announces_trailers,
        chunkable,
        ..
    } = head;
    // Where hyper's server has it: last of the map's fields.
    if let Some(id) = request_id {
        put_field(dst, X_REQUEST_ID.as_str().as_bytes(), id.as_bytes());
    }
    if !wrote_len {
        encoder = match length {
            Some(None) if chunkable => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Encoder::Chunked
            }
            Some(None) => Encoder::Close,
            None | Some(Some(0)) => {
                if can_have_content_length(method, status) && method != Method::HEAD {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Encoder::Length(0)
            }
            Some(Some(n)) => {
                if can_have_content_length(method, status) {
                    dst.extend_from_slice(b"content-length: ");
                    dst.extend_from_slice(itoa(n).as_bytes());
                    dst.extend_from_slice(b"\r\n");
                    Encoder::Length(n)
                } else {
                    Encoder::Length(0)
                }
            }
        };
    }
    if !can_chunked(method, status) {
        encoder = Encoder::Length(0);
    }
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        date(dst);
        dst.extend_from_slice(b"\r\n\r\n");
    } else {
        dst.extend_from_slice(b"\r\n");
    }
    let trailer_names = announces_trailers.then(|| announced_trailers(resp.headers()));
    (encoder, last, trailer_names)
}

/// `dst[at..at + len]` in ASCII lower case, eight bytes at a time where
/// eight follow `at` in `dst` (a field's name has its value and CRLF
/// after it): `make_ascii_lowercase` goes a byte at a time, about 140
/// instructions for the 22 bytes of names in the bare request's answer,
/// against about 90 for this (`benches/instructions.sh`, then
/// `benches/callgrind_calls.py callees ... encode_head`).
fn lowercase_at(dst: &mut [u8], at: usize, len: usize) {
    const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const FROM_A: u64 = u64::from_ne_bytes([0x80 - b'A'; 8]);
    const PAST_Z: u64 = u64::from_ne_bytes([0x80 - b'Z' - 1; 8]);
    let mut i = at;
    let end = at + len;
    while i < end {
        let Some(word) = dst.get_mut(i..i + 8) else {
            dst[i..end].make_ascii_lowercase();
            return;
        };
        let x = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let low = x & LOW7;
        // The top bit of each byte: set for `A` to `Z` (not for bytes of
        // 0x80 and up); no sum carries into the next byte.
        let upper = (low + FROM_A) & !(low + PAST_Z) & !x & HIGH;
        let taken = (end - i).min(8);
        let mask = if taken == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * taken)) - 1
        };
        word.copy_from_slice(&(x | ((upper & mask) >> 2)).to_le_bytes());
        i += 8;
    }
}

/// One `name: value` line.
fn put_field(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

/// What `encode_head` has learnt from the fields written so far.
struct HeadFields<'a> {
    /// The body's, as `encode_head` takes it.
    length: Option<Option<u64>>,
    method: &'a Method,
    chunkable: bool,
    encoder: Encoder,
    wrote_len: bool,
    wrote_date: bool,
    /// A header whose values are joined on one line is open until the
    /// next name; with it, whether `chunked` must close it.
    open: Option<bool>,
    prev_len: Option<u64>,
    last: bool,
    announces_trailers: bool,
}

impl HeadFields<'_> {
    fn close_line(&mut self, dst: &mut Vec<u8>) {
        if let Some(must_chunk) = self.open.take() {
            dst.extend_from_slice(if must_chunk {
                b", chunked\r\n"
            } else {
                b"\r\n"
            });
        }
    }

    /// A `Content-Length` field (the first of its name: `new_name`)
    /// written as hyper's server writes it; true if it is to be written
    /// as any other field is.
    fn content_length(&mut self, dst: &mut Vec<u8>, value: &[u8], new_name: bool) -> bool {
        match self.length {
            Some(Some(known)) => {
                if new_name {
                    self.encoder = Encoder::Length(known);
                    dst.extend_from_slice(b"content-length: ");
                    dst.extend_from_slice(value);
                    self.wrote_len = true;
                    self.open = Some(false);
                }
                false
            }
            Some(None) => {
                let Some(n) = content_length_value(value) else {
                    return false;
                };
                if self.prev_len.is_some() {
                    return false;
                }
                self.encoder = Encoder::Length(n);
                dst.extend_from_slice(b"content-length: ");
                dst.extend_from_slice(value);
                self.wrote_len = true;
                self.open = Some(false);
                self.prev_len = Some(n);
                false
            }
            None if *self.method != Method::HEAD => false,
            None => {
                self.wrote_len = true;
                true
            }
        }
    }
}

/// hyper's `encode_trailers`: the last chunk with the trailer fields the
/// head announced (bar those that must not be trailers) into `dst`;
/// nothing when none is left.
fn trailer_section(dst: &mut Vec<u8>, trailers: HeaderMap, announced: &[HeaderName]) {
    let mut name = None;
    for (n, value) in trailers {
        if n.is_some() {
            name = n;
        }
        let Some(name) = &name else { continue };
        if !announced.contains(name) || !may_be_trailer(name) {
            continue;
        }
        if dst.is_empty() {
            dst.extend_from_slice(b"0\r\n");
        }
        put_field(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dst.is_empty() {
        dst.extend_from_slice(b"\r\n");
    }
}

fn itoa(n: u64) -> String {
    n.to_string()
}

/// Appends the current `Date` value, formatted once a second per thread
/// (hyper caches it the same way).
fn date(dst: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != second || c.1.is_empty() {
            *c = (second, httpdate::fmt_http_date(now));
        }
        dst.extend_from_slice(c.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowered_as_make_ascii_lowercase_lowers_them() {
        // Every byte value, at every offset and length, with and without
        // eight bytes to spare after it.
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for at in 0..9 {
            for len in 0..24 {
                for spare in [0, 3, 8] {
                    for start in (0..all.len() - 40).step_by(7) {
                        let text = &all[start..start + at + len + spare];
                        let mut expected = text.to_vec();
                        expected[at..at + len].make_ascii_lowercase();
                        let mut got = text.to_vec();
                        lowercase_at(&mut got, at, len);
                        assert_eq!(got, expected, "at {at} len {len} spare {spare}");
                    }
                }
            }
        }
    }

    /// The body bytes of `wire` read by [`Chunked`], whether it ended, and
    /// its trailer fields; `None` for an error.
    fn dechunk(wire: &[u8]) -> crate::upstream::h1::Decoded {
        dechunk_in_pieces(&[wire])
    }

    /// [`Chunked::step`] over `pieces`, as reads bring them.
    fn dechunk_in_pieces(pieces: &[&[u8]]) -> crate::upstream::h1::Decoded {
        let mut c = Chunked::new();
        let mut buf = BytesMut::new();
        let mut trailers = None;
        let mut data = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match c.step(&mut buf, &mut trailers).ok()? {
                    Step::Data(n) => data.extend_from_slice(&buf.split_to(n)),
                    Step::End => {
                        let fields = match trailers {
                            Some(t) => trailer_map(&t)?,
                            None => HeaderMap::new(),
                        };
                        let fields = crate::upstream::h1::trailer_pairs(&fields);
                        return Some((data, fields, true));
                    }
                    Step::More => break,
                }
            }
        }
        Some((data, Vec::new(), false))
    }

    /// However the reads cut a chunked upload, the server decodes the
    /// same data and trailers, or fails alike; a well-formed one as the
    /// client's decoder decodes it (two decoders, one body).
    #[test]
    fn chunked_uploads_decode_the_same_however_they_are_cut() {
        crate::upstream::h1::check_chunked_decoder(0x7570_6c6f_6164, dechunk_in_pieces);
    }

    #[test]
    fn chunked_bodies_are_read_as_hyper_reads_them() {
        let (body, _, end) =
            dechunk(b"4\r\nwiki\r\n5;a=b\r\npedia\r\nA \r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!((&body[..], end), (&b"wikipedia0123456789"[..], true));
        // Trailer fields become the body's trailers, as with hyper.
        let (body, trailers, end) =
            dechunk(b"1\r\nx\r\n0\r\nX-T: 1\r\nx-t: 2\r\nX-U:3\r\n\r\n").unwrap();
        assert_eq!((&body[..], end), (&b"x"[..], true));
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        assert_eq!(
            trailers,
            [pair("x-t", "1"), pair("x-t", "2"), pair("x-u", "3")]
        );
        assert!(dechunk(b"0\r\n\r\n").unwrap().1.is_empty());
        // A field hyper cannot make, too many fields, too many bytes.
        assert!(dechunk(b"0\r\nX T: 1\r\n\r\n").is_none());
        let many = format!("0\r\n{}\r\n", "X-A: 1\r\n".repeat(MAX_HEADERS + 1));
        assert!(dechunk(many.as_bytes()).is_none());
        let exactly = format!("0\r\n{}\r\n", "X-A: 1\r\n".repeat(MAX_HEADERS));
        assert_eq!(dechunk(exactly.as_bytes()).unwrap().1.len(), MAX_HEADERS);
        let long = format!("0\r\nX-Big: {}\r\n\r\n", "a".repeat(TRAILER_LIMIT));
        assert!(dechunk(long.as_bytes()).is_none());
        // Cut anywhere: what came so far, and no end.
        let wire = b"4\r\nwiki\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            let (body, _, end) = dechunk(&wire[..cut]).unwrap();
            assert!(!end && b"wiki".starts_with(&body), "{cut}");
        }
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"fffffffffffffffff\r\n",
            b"3\r\nabcX",
            b"3\nabc",
            b"3;a\nabc",
            b"3 4\r\n",
            b"0\r\n\rX",
        ] {
            assert!(dechunk(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn lengths_are_digits_and_equal_lists() {
        let cl = |s: &'static str| content_length_value(s.as_bytes());
        assert_eq!(cl("42"), Some(42));
        assert_eq!(cl("3, 3"), Some(3));
        assert_eq!(cl(" 7 "), Some(7));
        assert_eq!(cl("0"), Some(0));
        assert_eq!(cl("9999999999999999999"), Some(9_999_999_999_999_999_999));
        for bad in [
            "",
            "+3",
            "-1",
            "3, 4",
            "0x10",
            "1 2",
            "99999999999999999999",
        ] {
            assert_eq!(cl(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_requests_length_is_digits_alone_as_hyper_reads_it() {
        let cl = |s: &'static str| request_length(s.as_bytes());
        assert_eq!(cl("42"), Some(42));
        assert_eq!(cl("0"), Some(0));
        // Leading zeros past 19 digits, and 20 digits within `u64`.
        assert_eq!(cl("0000000000000000000000007"), Some(7));
        assert_eq!(cl("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "3, 3",
            "3,3",
            " 7",
            "+3",
            "-1",
            "0x10",
            "1 2",
            "18446744073709551616",
        ] {
            assert_eq!(cl(bad), None, "{bad}");
        }
    }

    /// What `parse` makes of `wire`: a request's head, or what else.
    fn head_with(wire: &str, unread: UnreadNames) -> Option<Result<Parsed, Head>> {
        let mut out = None;
        let head = parse(
            &mut BytesMut::from(wire.as_bytes()),
            true,
            &mut HeaderMap::new(),
            unread,
            &mut out,
        )?;
        Some(match head {
            Head::Request => Ok(out.expect("a request parsed into its slot")),
            other => {
                assert!(out.is_none(), "{wire}");
                Err(other)
            }
        })
    }

    fn head(wire: &str) -> Option<Result<Parsed, Head>> {
        head_with(wire, UnreadNames::NONE)
    }

    fn head_passing(wire: &str, unread: UnreadNames) -> Parsed {
        match head_with(wire, unread) {
            Some(Ok(p)) => p,
            _ => panic!("not a request: {wire}"),
        }
    }

    #[test]
    fn fields_of_the_names_passed_stay_out_of_the_map_unless_connection_names_fields() {
        let all = UnreadNames::of_listener(false, []);
        let wire = "GET / HTTP/1.1\r\nAccept: a\r\nHost: x\r\nsec-fetch-mode: navigate\r\n\
                    ACCEPT: odd\r\nConnection: keep-alive\r\nAccept: b\r\nX-Other: 1\r\n\r\n";
        let p = head_passing(wire, all);
        // Matched in any case.
        let in_map: Vec<_> = p
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        assert_eq!(in_map, ["host: x", "connection: keep-alive", "x-other: 1"]);
        let unread = p.unread.expect("fields passed unread");
        let mut written = Vec::new();
        unread.write(&mut written);
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "accept: a\r\naccept: odd\r\naccept: b\r\nsec-fetch-mode: navigate\r\n"
        );
        // None passed where the listener passes none.
        let p = head_passing(wire, UnreadNames::NONE);
        assert!(p.unread.is_none() && p.headers.get_all(header::ACCEPT).iter().count() == 3);
        // A Connection naming a field, before or after it: every field in
        // the map, for the stripping.
        for wire in [
            "GET / HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: cors\r\nConnection: close, Sec-Fetch-Mode\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: Sec-Fetch-Mode\r\nHost: x\r\nSec-Fetch-Mode: cors\r\n\r\n",
        ] {
            let p = head_passing(wire, all);
            assert!(p.unread.is_none(), "{wire}");
            assert_eq!(p.headers["sec-fetch-mode"], "cors");
        }
    }

    /// 5,000 random heads over the names the split and the stripping look
    /// at, in random case, with `Connection` naming random fields or none:
    /// the map and the passed fields hold together every field, each
    /// name's in order, of the head parsed with nothing passed; and a head
    /// whose `Connection` names a field passes nothing.
    #[test]
    fn passed_fields_and_the_map_hold_every_field_and_connection_names_none_passed() {
        let names = [
            "Host",
            "Accept",
            "DNT",
            "Sec-Fetch-Mode",
            "sec-fetch-dest",
            "User-Agent",
            "X-Other",
            "Connection",
            "Cookie",
            "Referer",
            "Accept-Language",
        ];
        let connection_values = [
            "keep-alive",
            "close",
            "Accept",
            "close, dnt",
            "x-other",
            "",
            "Keep-Alive, CLOSE",
        ];
        let all = UnreadNames::of_listener(false, []);
        let some_read = UnreadNames::of_listener(true, ["accept"]);
        let mut rng = fastrand::Rng::with_seed(17);
        let fields_of = |p: &Parsed| {
            let mut by_name: Vec<(String, Vec<String>)> = Vec::new();
            let mut add = |n: &str, v: &str| match by_name.iter_mut().find(|(k, _)| k == n) {
                Some((_, vs)) => vs.push(v.to_owned()),
                None => by_name.push((n.to_owned(), vec![v.to_owned()])),
            };
            for (n, v) in &p.headers {
                add(n.as_str(), v.to_str().unwrap());
            }
            if let Some(u) = &p.unread {
                let mut lines = Vec::new();
                u.write(&mut lines);
                for line in String::from_utf8(lines).unwrap().split_terminator("\r\n") {
                    let (n, v) = line.split_once(": ").unwrap();
                    add(n, v);
                }
            }
            by_name.sort();
            by_name
        };
        for _ in 0..5_000 {
            let mut wire = String::from("GET / HTTP/1.1\r\n");
            let mut names_a_field = false;
            for i in 0..rng.usize(1..12) {
                let name = names[rng.usize(..names.len())];
                let name: String = name
                    .chars()
                    .map(|c| {
                        if rng.bool() {
                            c.to_ascii_uppercase()
                        } else {
                            c.to_ascii_lowercase()
                        }
                    })
                    .collect();
                let value = if name.eq_ignore_ascii_case("connection") {
                    let v = connection_values[rng.usize(..connection_values.len())];
                    names_a_field |= !names_no_field(v.as_bytes());
                    v.to_owned()
                } else {
                    format!("v{i}")
                };
                wire.push_str(&format!("{name}: {value}\r\n"));
            }
            wire.push_str("\r\n");
            let passed = head_passing(&wire, all);
            let whole = head_passing(&wire, UnreadNames::NONE);
            assert!(whole.unread.is_none());
            assert_eq!(fields_of(&passed), fields_of(&whole), "{wire}");
            // Some names read by the config (an access log, a rule on
            // `Accept`): those go into the map, the rest pass.
            let some = head_passing(&wire, some_read);
            assert_eq!(fields_of(&some), fields_of(&whole), "{wire}");
            if let Some(u) = &some.unread {
                assert!(u.names().within(some_read), "{wire}");
            }
            let in_map = |p: &Parsed| {
                p.headers
                    .keys()
                    .any(|n| UnreadName::of(n.as_str().as_bytes()).is_some())
            };
            if names_a_field {
                assert!(passed.unread.is_none(), "{wire}");
            } else {
                assert!(!in_map(&passed), "{wire}");
            }
        }
    }

    #[test]
    fn a_lone_first_host_is_kept_out_of_the_map_and_no_other() {
        let host_of = |wire: &str| {
            let p = head_passing(wire, UnreadNames::NONE);
            let in_map: Vec<_> = p.headers.get_all(header::HOST).iter().cloned().collect();
            (p.host, in_map, p.headers.len())
        };
        for wire in [
            "GET / HTTP/1.1\r\nHost: a\r\nX-One: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHOST: a\r\n\r\n",
            "GET / HTTP/1.0\r\nhost: a\r\nX-One: 1\r\n\r\n",
        ] {
            let (kept, in_map, len) = host_of(wire);
            assert_eq!(
                kept.as_ref().map(|v| v.as_bytes()),
                Some(&b"a"[..]),
                "{wire}"
            );
            assert!(in_map.is_empty(), "{wire}");
            assert_eq!(len, wire.matches("X-One").count(), "{wire}");
        }
        // Not first, or not alone: in the map in its place, as hyper puts it.
        for (wire, in_map_count) in [
            ("GET / HTTP/1.1\r\nX-One: 1\r\nHost: a\r\n\r\n", 1),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 2),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nhost: b\r\n\r\n",
                2,
            ),
            ("GET / HTTP/1.1\r\nHosts: a\r\n\r\n", 0),
        ] {
            let (kept, in_map, _) = host_of(wire);
            assert!(kept.is_none(), "{wire}");
            assert_eq!(in_map.len(), in_map_count, "{wire}");
        }
    }

    #[test]
    fn heads_are_framed_and_refused_as_hyper_does() {
        let Some(Ok(p)) =
            head("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
        else {
            panic!("chunked wins");
        };
        assert!(matches!(p.framing, Framing::Chunked(_)) && !p.keep_alive);
        assert!(!p.headers.contains_key(header::CONTENT_LENGTH));
        let Some(Ok(p)) = head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n") else {
            panic!("1.0");
        };
        assert!(p.keep_alive && matches!(p.framing, Framing::Done));
        for refused in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        ] {
            assert!(
                matches!(
                    head(refused),
                    Some(Err(Head::Refused(StatusCode::BAD_REQUEST)))
                ),
                "{refused}"
            );
        }
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n").is_none());
        assert!(head("PRI * HTTP/2.0\r\n").is_none());
        assert!(matches!(
            head("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Err(Head::Hyper))
        ));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            Some(Err(Head::Hyper))
        ));
    }
}
