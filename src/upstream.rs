//! Connections to backends: how they are opened (a pool's
//! `backend_protocol` and `tls`) and kept.
//!
//! HTTP/1.1, cleartext or over TLS, goes through geolb's own client
//! ([`h1`], driven in the request's task) unless a pool says
//! `http1_client = "hyper"`; HTTP/2 through geolb's ([`h2_client`], the
//! `h2` crate's streams opened from the request's task); upgrades
//! through hyper's.
//!
//! An HTTP/1.1 connection goes back to its backend's idle list only once
//! its response body has been read to the end, so whatever is taken from
//! the list is free for a new request. It may still have been closed by
//! the backend in the meantime: `send_own` (or `try_send_request`, for
//! hyper's client) then hands the request back unwritten, and the caller
//! tries again. An HTTP/2 connection carries
//! many requests at once, so one per backend is shared rather than taken.

use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use crate::config::{BackendProtocol, Http1Client, PoolConfig};
use crate::stamp::Stamp;
use crate::tcp_io::TcpIo;
use crate::tls_client;
use answer_first::AnswerFirst;

mod answer_first;
pub mod h1;
mod h2_client;
pub mod unread;

/// A field's value as httparse handed it over, not checked again: httparse
/// admits exactly the bytes `HeaderValue::from_bytes` does (tab, space to
/// `~`, 0x80 to 0xFF; pinned by `httparse_admits_the_bytes_a_header_value_does`),
/// and checking each byte again cost 4 instructions a byte, 2,200 a
/// browser's request. hyper's and actix's HTTP/1 parsers do the same. The
/// call is `unsafe` only as a warning against bytes that could split a
/// message; it cannot cause undefined behaviour (hyperium/http#871, #873:
/// the "valid UTF-8" in its doc is wrong, a `HeaderValue` is bytes), and a
/// debug build still checks every value.
#[allow(unsafe_code)]
pub fn parsed_value(value: bytes::Bytes) -> http::HeaderValue {
    // SAFETY: see above; `value` is a field value httparse accepted.
    unsafe { http::HeaderValue::from_maybe_shared_unchecked(value) }
}

/// Puts `map` in `slot`, the map of a message just made. The map it
/// replaces, never given room, owns no memory: it is let go without its
/// drop glue, which cost 61 instructions a map (a request's and a
/// response's: `benches/callgrind_calls.py sites ...
/// 'drop_in_place<http::header::map::HeaderMap>'`).
pub fn put_headers(slot: &mut http::HeaderMap, map: http::HeaderMap) {
    drop_headers(std::mem::replace(slot, map));
}

/// Empties `map` for its next message, keeping its room; an empty one is
/// left as it is (`HeaderMap::clear` rewrites the whole index table even
/// then).
#[inline]
pub fn clear_headers(map: &mut http::HeaderMap) {
    if !map.is_empty() {
        map.clear();
    }
}

/// Drops `map`; one never given room, which owns no memory, is let go
/// without its drop glue (see [`put_headers`]).
#[inline]
pub fn drop_headers(map: http::HeaderMap) {
    if map.capacity() == 0 {
        // No room: no table, no entries and no extra values allocated.
        std::mem::forget(map);
    }
}

/// Up to this many names, a map is searched name by name rather than by
/// hash: http's hash of a name (FNV over its enum, a byte at a time)
/// alone costs about 75 instructions a lookup, a comparison a few.
const SCANNED_NAMES: usize = 8;

/// Whether `headers` has a field named `name`.
pub fn has_field(headers: &http::HeaderMap, name: &http::HeaderName) -> bool {
    if headers.keys_len() <= SCANNED_NAMES {
        headers.keys().any(|n| n == name)
    } else {
        headers.contains_key(name)
    }
}

/// Every value of the fields named `name`, in order; a small map scanned
/// as in [`has_field`].
pub fn field_values<'a>(
    headers: &'a http::HeaderMap,
    name: &http::HeaderName,
) -> impl Iterator<Item = &'a http::HeaderValue> {
    let scanned = headers.keys_len() <= SCANNED_NAMES;
    let by_scan = scanned.then(|| {
        headers
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v)
    });
    let by_hash = (!scanned).then(|| headers.get_all(name).iter());
    by_scan
        .into_iter()
        .flatten()
        .chain(by_hash.into_iter().flatten())
}

/// The first value of the fields named `name`, and whether another
/// follows it. Not [`field_values`] with a `next` or two: its chained
/// iterators cost 60 instructions a request more here
/// (`benches/instructions.sh`), on every request's `Host`.
pub fn first_field<'a>(
    headers: &'a http::HeaderMap,
    name: &http::HeaderName,
) -> (Option<&'a http::HeaderValue>, bool) {
    if headers.keys_len() <= SCANNED_NAMES {
        let mut values = headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v);
        let first = values.next();
        // A map with no more values than names repeats none: the rest of
        // it is not scanned (39 instructions a request).
        let more = first.is_some() && headers.len() > headers.keys_len() && values.next().is_some();
        (first, more)
    } else {
        let mut values = headers.get_all(name).iter();
        (values.next(), values.next().is_some())
    }
}

/// What is sent to a backend: the client's body streamed on, or none.
pub type BackendRequestBody =
    http_body_util::Either<ClientBody, http_body_util::Empty<bytes::Bytes>>;

/// Fields the proxy adds to a request it forwards (`X-Request-Id`,
/// `X-Forwarded-*`), sent after the client's own. geolb's HTTP/1 client
/// writes them as it writes the head, so they never enter the request's
/// header map, where each insert hashes a name that is not one of the
/// standard ones byte by byte (about 1,000 instructions a request for
/// the four, by `benches/instructions.sh`); for hyper's clients they go
/// into the map.
///
/// It carries too the client's fields that nothing read ([`unread`]): they
/// go out before the added ones, after the map's.
#[derive(Default)]
pub struct Added<'a> {
    fields: smallvec::SmallVec<[(&'static http::HeaderName, AddedValue<'a>); 4]>,
    unread: Option<Box<unread::Unread>>,
    /// The request's `X-Request-Id`, the first of the added fields.
    request_id: Option<crate::request_id::RequestId>,
    /// The client's `Host`, where it was its request's one and first
    /// field: kept out of the map (its insert and the lookups for it cost
    /// about 280 instructions a request, `benches/instructions.sh`) and
    /// written first, where it came.
    host: Option<http::HeaderValue>,
}

/// An added field's value: the request's own, or one the connection (or
/// geolb) holds for all its requests, lent rather than copied: a copy is
/// a count taken on its bytes and given back, two locked instructions and
/// two calls a request (`X-Forwarded-For`'s client address,
/// `X-Forwarded-Proto`'s scheme).
pub enum AddedValue<'a> {
    Own(http::HeaderValue),
    Lent(&'a http::HeaderValue),
}

impl AddedValue<'_> {
    pub fn get(&self) -> &http::HeaderValue {
        match self {
            AddedValue::Own(v) => v,
            AddedValue::Lent(v) => v,
        }
    }

    fn into_owned(self) -> http::HeaderValue {
        match self {
            AddedValue::Own(v) => v,
            AddedValue::Lent(v) => v.clone(),
        }
    }
}

impl Drop for Added<'_> {
    fn drop(&mut self) {
        if let Some(u) = self.unread.take() {
            u.recycle();
        }
    }
}

impl<'a> Added<'a> {
    /// `name` must not be in the request's map: the caller has taken the
    /// client's out (a map and this list both naming it would send both).
    // Inlined, the field is made where it goes (called, 41 instructions
    // a field).
    #[inline]
    pub fn push(&mut self, name: &'static http::HeaderName, value: AddedValue<'a>) {
        self.fields.push((name, value));
    }

    /// Moves the fields into `headers`, where what reads the map (header
    /// rules, a hashing balancer's key) finds them; none are left to add.
    /// The kept `Host` stays, to be written first: no rule may name it,
    /// and a key reads it from [`Added::host`].
    pub fn put_into(&mut self, headers: &mut http::HeaderMap) {
        if let Some(id) = self.request_id.take() {
            headers.insert(crate::request_id::X_REQUEST_ID.clone(), id.value());
        }
        for (name, value) in self.fields.drain(..) {
            headers.insert(name.clone(), value.into_owned());
        }
    }

    /// The request's id, to go out first of the added fields: written
    /// from its own bytes, made a field value only for a map.
    pub fn set_request_id(&mut self, id: crate::request_id::RequestId) {
        self.request_id = Some(id);
    }

    /// The request's `Host`, kept out of its map (see the field's doc).
    pub fn set_host(&mut self, host: http::HeaderValue) {
        self.host = Some(host);
    }

    /// The `Host` kept out of the map, if any.
    pub fn host(&self) -> Option<&http::HeaderValue> {
        self.host.as_ref()
    }

    /// Puts the kept `Host` into `headers`, for what reads or sends the
    /// map: `first`, where it came, ahead of the fields already there
    /// (the map made again behind it); else anywhere, where no order
    /// shows (an HTTP/2 backend's `:authority` is made of it).
    pub fn host_into(&mut self, headers: &mut http::HeaderMap, first: bool) {
        let Some(host) = self.host.take() else {
            return;
        };
        if !first || headers.is_empty() {
            headers.insert(http::header::HOST, host);
            return;
        }
        let behind = std::mem::take(headers);
        headers.reserve(behind.keys_len() + 1);
        headers.insert(http::header::HOST, host);
        headers.extend(behind);
    }

    /// The client's fields that nothing read, to go out with the added
    /// ones (the map holds none of their names).
    pub fn pass_unread(&mut self, unread: Box<unread::Unread>) {
        self.unread = Some(unread);
    }

    /// Copies the fields into `headers`, for a client that sends the map.
    /// Once: a request a connection could not take comes back with them
    /// in its map, to be sent again on another.
    fn copy_into(&self, headers: &mut http::HeaderMap) {
        debug_assert!(
            self.host.is_none(),
            "put into the map for a client that sends it"
        );
        if let Some(u) = &self.unread
            && !u.is_in(headers)
        {
            u.append_to(headers);
        }
        if let Some(id) = &self.request_id {
            headers.insert(crate::request_id::X_REQUEST_ID.clone(), id.value());
        }
        for (name, value) in &self.fields {
            headers.insert((*name).clone(), value.get().clone());
        }
    }

    /// Writes the kept `Host` as a head line, to go before the map's.
    fn write_host(&self, dst: &mut impl bytes::BufMut) {
        if let Some(h) = &self.host {
            h1::write_fields([(&http::header::HOST, h)], dst);
        }
    }

    /// Writes the fields as head lines: the client's unread ones, then the
    /// added ones.
    fn write(&self, dst: &mut impl bytes::BufMut) {
        if let Some(u) = &self.unread {
            u.write(dst);
        }
        if let Some(id) = &self.request_id {
            dst.put_slice(b"x-request-id: ");
            dst.put_slice(id.as_bytes());
            dst.put_slice(b"\r\n");
        }
        h1::write_fields(self.fields.iter().map(|(n, v)| (*n, v.get())), dst);
    }
}

/// A client's request body on its way to a backend, telling whoever holds
/// its [`BodyProgress`] how far the client got: a failed request is the
/// client's fault, not the backend's, when its body was malformed or
/// stopped coming.
pub struct ClientBody {
    inner: RequestBody,
    progress: Option<BodyProgress>,
    /// Bytes the body may carry (a route's `max_body`); past them it
    /// fails with [`BodyError::TooLarge`].
    limit: Option<u64>,
    seen: u64,
}

/// The most of a request body kept while an HTTP/2 backend has not
/// answered, so that a request it did not act on (a stream past its
/// GOAWAY, or one it refused) is sent again whole. HAProxy's L7 retries
/// likewise need the request in its buffer; a larger body fails as
/// before.
pub const KEEP_FOR_RESENDING: u64 = 64 * 1024;

/// The frames of a body as they went to a backend, kept to go again:
/// its first two chunks by reference, the rest copied into one buffer.
/// A chunk by reference holds the whole read buffer it was cut from, so
/// a client sending its body a byte at a time could otherwise make each
/// byte hold a buffer.
#[derive(Default)]
pub struct Sent {
    /// A small body comes in one chunk or two: kept here, not in an
    /// allocation of its own.
    chunks: smallvec::SmallVec<[bytes::Bytes; 2]>,
    more: bytes::BytesMut,
    /// Rare: not in every request's sending future.
    trailers: Option<Box<http::HeaderMap>>,
    bytes: u64,
}

impl Sent {
    /// False once the body is more than is kept.
    pub fn record(&mut self, frame: &Frame<bytes::Bytes>) -> bool {
        if let Some(data) = frame.data_ref() {
            self.bytes += data.len() as u64;
            if self.bytes > KEEP_FOR_RESENDING {
                return false;
            }
            if self.chunks.len() < 2 {
                self.chunks.push(data.clone());
            } else {
                self.more.extend_from_slice(data);
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(Box::new(trailers.clone()));
        }
        true
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }
}

/// A body going again: what it sent before, then the rest as it comes.
pub struct Resent {
    /// What was sent (the copied part last), and its trailers.
    sent: Sent,
    /// The next of `sent`'s chunks (past them, its trailers).
    at: usize,
    rest: RequestBody,
}

impl Resent {
    fn new(mut sent: Sent, rest: RequestBody) -> Resent {
        if !sent.more.is_empty() {
            let more = std::mem::take(&mut sent.more).freeze();
            sent.chunks.push(more);
        }
        Resent { sent, at: 0, rest }
    }

    fn next_again(&mut self) -> Option<Frame<bytes::Bytes>> {
        let frame = match self.sent.chunks.get(self.at) {
            Some(chunk) => Frame::data(chunk.clone()),
            None if self.at == self.sent.chunks.len() => {
                Frame::trailers(*self.sent.trailers.clone()?)
            }
            None => return None,
        };
        self.at += 1;
        Some(frame)
    }

    fn given(&self) -> bool {
        self.at >= self.sent.chunks.len() + usize::from(self.sent.trailers.is_some())
    }

    fn left(&self) -> u64 {
        let chunks = &self.sent.chunks[self.at.min(self.sent.chunks.len())..];
        chunks.iter().map(|c| c.len() as u64).sum()
    }
}

/// A client's request body as it arrives: read by hyper's server, or by
/// geolb's own HTTP/1 server (`proxy::h1`), whose body type sits above
/// this layer and so comes boxed; a request without a body (most) needs
/// no box.
pub enum RequestBody {
    Hyper(Incoming),
    Empty,
    Own(Pin<Box<dyn Body<Data = bytes::Bytes, Error = io::Error> + Send + Sync>>),
    /// Going again to a backend that did not act on it.
    Resent(Box<Resent>),
}

impl RequestBody {
    /// The next frame of what a body sent again had sent before, at any
    /// depth (sent again a third time, cut short in the second).
    fn next_again(&mut self) -> Option<Frame<bytes::Bytes>> {
        match self {
            RequestBody::Resent(r) => r.next_again().or_else(|| r.rest.next_again()),
            _ => None,
        }
    }
}

impl Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Own(b) => b.as_mut().poll_frame(cx).map_err(BodyError::from),
            RequestBody::Resent(r) => match r.next_again() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Pin::new(&mut r.rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Empty => true,
            RequestBody::Own(b) => b.is_end_stream(),
            RequestBody::Resent(r) => r.given() && r.rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Own(b) => b.size_hint(),
            RequestBody::Resent(r) => {
                let (rest, left) = (r.rest.size_hint(), r.left());
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + left);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + left);
                }
                hint
            }
        }
    }
}

/// Why a client's body stopped short of its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Client(#[from] hyper::Error),
    /// geolb's HTTP/1 server: the connection failed or the framing was
    /// malformed.
    #[error(transparent)]
    Read(#[from] io::Error),
    #[error("the request body is over max_body ({0} bytes)")]
    TooLarge(u64),
}

/// Where a [`ClientBody`] is, shared with the request's handler.
#[derive(Clone)]
pub struct BodyProgress(Arc<Progress>);

#[derive(Default)]
struct Progress {
    state: AtomicU8,
    /// Body bytes received so far (the access log's `bytes_received`).
    received: AtomicU64,
}

/// What the client's body last did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    /// Not yet asked for, or gave a frame: waiting on the backend if
    /// anything.
    Moving,
    /// Asked for and not there: waiting on the client.
    WaitingForClient,
    Ended,
    /// The client's bytes were malformed (or it went away mid-body).
    Failed,
    /// More bytes came than `max_body` allows: not forwarded.
    TooLarge,
}

impl BodyProgress {
    pub fn state(&self) -> BodyState {
        match self.0.state.load(Ordering::Relaxed) {
            0 => BodyState::Moving,
            1 => BodyState::WaitingForClient,
            2 => BodyState::Ended,
            3 => BodyState::Failed,
            _ => BodyState::TooLarge,
        }
    }

    fn set(&self, state: BodyState) {
        self.0.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn received(&self) -> u64 {
        self.0.received.load(Ordering::Relaxed)
    }
}

/// `req` with its body made the one sent to a backend ([`lent_body`]), in
/// the slot each try takes it from, and what watches that body.
pub fn lend(
    req: Request<RequestBody>,
) -> (Option<Request<BackendRequestBody>>, Option<BodyProgress>) {
    let mut progress = None;
    let req = req.map(|body| {
        let (body, watch) = lent_body(body);
        progress = watch;
        body
    });
    (Some(req), progress)
}

/// A client's request body as it is sent to a backend, and what watches
/// it (see [`ClientBody::new`]).
pub fn lent_body(body: RequestBody) -> (BackendRequestBody, Option<BodyProgress>) {
    let (body, progress) = ClientBody::new(body);
    (http_body_util::Either::Left(body), progress)
}

impl ClientBody {
    /// Wraps `body`, with a [`BodyProgress`] to watch it unless it is
    /// already at its end (nothing to watch, nothing allocated).
    pub fn new(body: RequestBody) -> (ClientBody, Option<BodyProgress>) {
        let progress = if body.is_end_stream() {
            None
        } else {
            Some(BodyProgress(Arc::default()))
        };
        let watch = progress.clone();
        (
            ClientBody {
                inner: body,
                progress,
                limit: None,
                seen: 0,
            },
            watch,
        )
    }

    /// The bytes the body may carry, set before any is read.
    pub fn limit(&mut self, max: u64) {
        self.limit = Some(max);
    }

    /// Gives `sent` (what the body gave before) again first, then the
    /// rest as it comes; a body given again before and cut short again
    /// still gives what it had left of that after.
    pub fn send_again_first(&mut self, sent: Sent) {
        if sent.is_empty() {
            return;
        }
        let rest = std::mem::replace(&mut self.inner, RequestBody::Empty);
        self.inner = RequestBody::Resent(Box::new(Resent::new(sent, rest)));
    }
}

impl Body for ClientBody {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(again) = this.inner.next_again() {
            // Counted, and checked against the limit, the first time; but
            // moving now, whatever the last sending had waited for.
            if let Some(progress) = &this.progress {
                progress.set(match this.inner.is_end_stream() {
                    true => BodyState::Ended,
                    false => BodyState::Moving,
                });
            }
            return Poll::Ready(Some(Ok(again)));
        }
        if let Some(limit) = this.limit.filter(|l| this.seen > *l) {
            return Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Some(limit), Poll::Ready(Some(Ok(frame)))) = (this.limit, &polled) {
            this.seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if this.seen > limit {
                // The frame is not passed on: the backend never gets a
                // byte past the limit, and its request fails unfinished.
                if let Some(progress) = &this.progress {
                    progress.set(BodyState::TooLarge);
                }
                return Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
            }
        }
        if let Some(progress) = &this.progress {
            progress.set(match &polled {
                Poll::Pending => BodyState::WaitingForClient,
                Poll::Ready(None) => BodyState::Ended,
                Poll::Ready(Some(Err(_))) => BodyState::Failed,
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    progress.0.received.fetch_add(len, Ordering::Relaxed);
                    if this.inner.is_end_stream() {
                        BodyState::Ended
                    } else {
                        BodyState::Moving
                    }
                }
            });
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A backend's response body, from whichever client fetched it.
pub enum BackendBody {
    Hyper(Incoming),
    Own(h1::ResponseBody),
    H2(h2_client::ResponseBody),
}

impl BackendBody {
    /// The response's fields, if they were kept as read (see
    /// [`h1::ResponseBody::take_read_fields`]).
    pub fn read_fields_mut(&mut self) -> Option<&mut h1::ReadFields> {
        match self {
            BackendBody::Own(b) => b.read_fields_mut(),
            BackendBody::Hyper(_) | BackendBody::H2(_) => None,
        }
    }

    /// See [`h1::ResponseBody::take_read_fields`].
    pub fn take_read_fields(&mut self) -> Option<Box<h1::ReadFields>> {
        match self {
            BackendBody::Own(b) => b.take_read_fields(),
            BackendBody::Hyper(_) | BackendBody::H2(_) => None,
        }
    }

    /// See [`h1::ResponseBody::reads_raw`]: only geolb's own client's
    /// bodies can be read from their socket.
    pub fn reads_raw(&self) -> bool {
        matches!(self, BackendBody::Own(b) if b.reads_raw())
    }

    /// See [`h1::ResponseBody::reads_chunks_raw`]: only geolb's own
    /// client's bodies.
    pub fn reads_chunks_raw(&self) -> bool {
        matches!(self, BackendBody::Own(b) if b.reads_chunks_raw())
    }

    /// See [`h1::ResponseBody::poll_raw_chunks`].
    pub fn poll_raw_chunks(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<h1::RawChunks, BackendError>> {
        match self {
            BackendBody::Own(b) => b.poll_raw_chunks(cx).map_err(BackendError::Own),
            BackendBody::Hyper(_) | BackendBody::H2(_) => Poll::Ready(Ok(h1::RawChunks::Frames)),
        }
    }

    /// See [`h1::ResponseBody::poll_read_raw`].
    pub fn poll_read_raw(
        &mut self,
        cx: &mut Context<'_>,
        read: impl FnMut(&TcpStream, usize) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        match self {
            BackendBody::Own(b) => b.poll_read_raw(cx, read),
            BackendBody::Hyper(_) | BackendBody::H2(_) => {
                Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
            }
        }
    }
}

/// Why a backend request failed, from whichever client sent it.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Own(#[from] h1::Error),
    #[error(transparent)]
    H2(h2::Error),
}

impl BackendError {
    /// The backend went away before a byte of its response: closed
    /// cleanly (hyper: incomplete message) or reset. A response that
    /// began and then failed is not this, nor is a garbled one.
    /// An HTTP/2 backend closing its connection, on a stream it did not
    /// take: not a failure of the backend (a refused stream is).
    pub fn went_away(&self) -> bool {
        matches!(self, BackendError::H2(e) if e.is_go_away() && e.is_remote())
    }

    pub fn closed_without_answer(&self) -> bool {
        match self {
            BackendError::Own(e) => e.closed_without_answer(),
            BackendError::H2(e) => {
                self.unprocessed() || e.get_io().is_some_and(|e| is_closed_kind(e.kind()))
            }
            BackendError::Hyper(e) => {
                if e.is_incomplete_message() {
                    return true;
                }
                std::error::Error::source(e)
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .is_some_and(|e| is_closed_kind(e.kind()))
            }
        }
    }
}

impl BackendError {
    /// The backend said it did not act on the request: an HTTP/2 stream
    /// it refused (RFC 9113 §8.7) or one past the last its GOAWAY took
    /// (§6.8). Sending it again is safe, on a new connection.
    pub fn unprocessed(&self) -> bool {
        match self {
            BackendError::H2(e) => {
                e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
            }
            BackendError::Hyper(_) | BackendError::Own(_) => false,
        }
    }
}

fn is_closed_kind(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// A request a connection failed to carry, with the request itself when
/// none of it was sent (the connection was closed before).
///
/// Boxed: made only on a failure, in place it would make every send's
/// result 560 bytes where a response is 304, and each move of a result
/// (out of the sending future, through the timeout) copies all of it.
pub struct SendError(Box<Failed>);

struct Failed {
    error: BackendError,
    request: Option<Request<BackendRequestBody>>,
    sent: Option<http::request::Parts>,
}

impl From<h1::SendError> for SendError {
    fn from(e: h1::SendError) -> Self {
        SendError::new(e.error.into(), e.request, e.sent)
    }
}

impl SendError {
    pub fn new(
        error: BackendError,
        request: Option<Request<BackendRequestBody>>,
        sent: Option<http::request::Parts>,
    ) -> SendError {
        SendError(Box::new(Failed {
            error,
            request,
            sent,
        }))
    }

    /// The request, if none of it was sent.
    pub fn take_message(&mut self) -> Option<Request<BackendRequestBody>> {
        self.0.request.take()
    }

    /// The head of a bodiless request that was sent, from a client that
    /// gives it back (see [`Upstream::gives_back_sent_heads`]).
    pub fn take_sent_head(&mut self) -> Option<http::request::Parts> {
        self.0.sent.take()
    }

    pub fn into_error(self) -> BackendError {
        self.0.error
    }
}

impl Body for BackendBody {
    type Data = bytes::Bytes;
    type Error = BackendError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BackendError>>> {
        match self.get_mut() {
            BackendBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BackendError::from),
            BackendBody::Own(b) => Pin::new(b).poll_frame(cx).map_err(BackendError::from),
            BackendBody::H2(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BackendBody::Hyper(b) => b.is_end_stream(),
            BackendBody::Own(b) => b.is_end_stream(),
            BackendBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BackendBody::Hyper(b) => b.size_hint(),
            BackendBody::Own(b) => b.size_hint(),
            BackendBody::H2(b) => b.size_hint(),
        }
    }
}

/// Closes all but the `max` newest of an idle list (newest last).
fn keep_newest<T>(list: &mut Vec<T>, max: usize) {
    let excess = list.len().saturating_sub(max);
    list.drain(..excess);
}

/// Below the common backend keep-alive timeouts (Apache httpd: 5 s), so we
/// drop a connection before the backend is likely to.
const IDLE_LIMIT: Duration = Duration::from_secs(4);

/// Idle since `since` for less than a kept connection may wait.
fn young(since: Stamp, now: Stamp) -> bool {
    now.since(since) < IDLE_LIMIT
}

/// How a pool's backends are spoken to; built with the snapshot (and
/// cloned into the snapshots that only change discovered backends).
#[derive(Clone)]
pub struct Upstream {
    protocol: BackendProtocol,
    tls: Option<UpstreamTls>,
    /// HTTP/1.1 through geolb's own client ([`h1`]), over TLS or not.
    own: bool,
    /// Tells connections opened one way from those opened another, for
    /// the idle lists, which are per backend address and outlive pools.
    profile: u64,
}

#[derive(Clone)]
struct UpstreamTls {
    connector: TlsConnector,
    sni: Option<ServerName<'static>>,
}

impl Upstream {
    /// Builds how `pool`'s backends are spoken to, reading its CA file:
    /// the error (a bad CA file or `sni`) is the config's, reported by
    /// `geolb check` and by reloads rather than by every request.
    pub fn new(pool: &PoolConfig) -> io::Result<Upstream> {
        let mut hasher = std::hash::DefaultHasher::new();
        (pool.backend_protocol, &pool.tls).hash(&mut hasher);
        let profile = match (pool.backend_protocol, &pool.tls) {
            (BackendProtocol::Http1, None) => 0,
            _ => hasher.finish() | 1,
        };
        let tls = match &pool.tls {
            None => None,
            Some(tls) => Some(UpstreamTls {
                connector: tls_connector(pool)?,
                sni: match tls.sni.as_deref() {
                    Some(name) => Some(tls_client::server_name(name)?),
                    None => None,
                },
            }),
        };
        Ok(Upstream {
            protocol: pool.backend_protocol,
            own: pool.http1_client == Http1Client::Geolb
                && pool.backend_protocol == BackendProtocol::Http1,
            tls,
            profile,
        })
    }

    pub fn is_http2(&self) -> bool {
        self.protocol != BackendProtocol::Http1
    }

    /// Readies a request made for an HTTP/1.1 backend (origin-form, `Host`)
    /// for an HTTP/2 one: the target in `:scheme` and `:authority`, taken
    /// from `Host` (RFC 9113 §8.3.1).
    pub fn adapt(&self, req: &mut Request<BackendRequestBody>) {
        if !self.is_http2() {
            return;
        }
        let scheme = if self.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        // Without a Host (HTTP/1.0), h2 sends the origin-form as is.
        let Some(host) = req.headers_mut().remove(header::HOST) else {
            return;
        };
        // Taken out first, put back in the rare case it makes no target: one
        // hashed lookup a request rather than a read and then a removal.
        let target = Authority::try_from(host.as_bytes())
            .ok()
            .and_then(|authority| {
                let mut parts = req.uri().clone().into_parts();
                parts.scheme = Some(scheme);
                parts.authority = Some(authority);
                Uri::from_parts(parts).ok()
            });
        match target {
            Some(uri) => {
                *req.uri_mut() = uri;
                *req.version_mut() = Version::HTTP_2;
            }
            None => {
                req.headers_mut().insert(header::HOST, host);
            }
        }
    }

    /// Whether a failed send of a bodiless request gives its sent head
    /// back ([`SendError::take_sent_head`]): geolb's own HTTP/1 client
    /// does, hyper's do not, so a request to be retried after them must be
    /// copied before it goes.
    pub fn gives_back_sent_heads(&self, upgrade: bool) -> bool {
        self.carries_own(upgrade)
    }

    /// Whether geolb's own HTTP/1 client carries a request: when the pool
    /// chose it, and never an upgrade (which it does not do).
    pub fn carries_own(&self, upgrade: bool) -> bool {
        self.own && !upgrade
    }

    /// A kept connection from the backend's idle list, if one is ready;
    /// a hyper one for an `upgrade` (geolb's own client does none).
    /// `now`: the caller's clock reading, for the connections' age.
    pub fn idle(&self, idle: &IdleConnections, upgrade: bool, now: Stamp) -> Option<Sender> {
        if self.carries_own(upgrade) {
            let home = idle.own_home(self.profile, now);
            return h1::take(&home, now).map(|conn| Sender::own(conn, home, self.profile));
        }
        if self.is_http2() {
            idle.shared_http2(self.profile)
        } else {
            idle.take_http1(self.profile, now)
        }
    }

    /// A new connection to `addr` within `timeout` (TCP connect, TLS and
    /// HTTP/2 handshakes); for HTTP/2, the shared one if another request
    /// opened it meanwhile. Boxed: connecting is the rare path, and inline
    /// its state would enlarge every request's future.
    pub fn connect<'a>(
        &'a self,
        idle: &'a IdleConnections,
        addr: SocketAddr,
        timeout: Duration,
        upgrade: bool,
    ) -> Pin<Box<dyn Future<Output = io::Result<Sender>> + Send + 'a>> {
        Box::pin(self.connect_within(idle, addr, timeout, upgrade))
    }

    async fn connect_within(
        &self,
        idle: &IdleConnections,
        addr: SocketAddr,
        timeout: Duration,
        upgrade: bool,
    ) -> io::Result<Sender> {
        let connect = async {
            if self.carries_own(upgrade) {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let stream = match &self.tls {
                    None => h1::Stream::Plain(TcpIo::new(stream)),
                    // Boxed: the handshake's state, which a plain connect
                    // does not need.
                    Some(tls) => h1::Stream::Tls(Box::new(
                        Box::pin(self.tls_over(tls, AnswerFirst::new(TcpIo::new(stream)), addr))
                            .await?,
                    )),
                };
                let home = idle.own_home(self.profile, Stamp::now());
                return Ok(Sender::own(h1::Kept::new(stream), home, self.profile));
            }
            // Boxed again: TLS and hyper's handshakes are KiBs of state
            // that the plain connect above does not need.
            if !self.is_http2() {
                return Box::pin(self.open(addr)).await;
            }
            // Requests arriving together wait for one HTTP/2 connection
            // rather than each opening its own.
            let _one_at_a_time = idle.http2_connecting.lock().await;
            if let Some(sender) = idle.shared_http2(self.profile) {
                return Ok(sender);
            }
            let sender = Box::pin(self.open(addr)).await?;
            if let Kind::Http2(connection) = &sender.kind {
                idle.share(self.profile, connection.clone());
            }
            Ok(sender)
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    async fn open(&self, addr: SocketAddr) -> io::Result<Sender> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let stream = TcpIo::new(stream);
        if self.is_http2() {
            return self.over(stream, addr).await;
        }
        // Below TLS when there is TLS: every write to the socket is
        // covered, those rustls makes while it reads too.
        self.over(AnswerFirst::new(stream), addr).await
    }

    /// hyper's connection over `stream`, in TLS if the pool says so.
    async fn over<S>(&self, stream: S, addr: SocketAddr) -> io::Result<Sender>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Some(tls) = &self.tls else {
            return self.handshake(stream, addr).await;
        };
        let stream = self.tls_over(tls, stream, addr).await?;
        self.handshake(stream, addr).await
    }

    /// TLS to the backend at `addr` over `stream`, with the pool's name
    /// for it (else its address) and, for `h2`, its consent by ALPN.
    async fn tls_over<S>(
        &self,
        tls: &UpstreamTls,
        stream: S,
        addr: SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = tls
            .sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let stream = tls
            .connector
            .connect(name, stream)
            .await
            .map_err(|e| io::Error::new(e.kind(), TlsError::Handshake(e)))?;
        if self.protocol == BackendProtocol::H2 && stream.get_ref().1.alpn_protocol() != Some(b"h2")
        {
            return Err(io::Error::other(TlsError::NoH2));
        }
        Ok(stream)
    }

    async fn handshake<S>(&self, stream: S, addr: SocketAddr) -> io::Result<Sender>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let kind = if self.is_http2() {
            Kind::Http2(h2_client::Connection::handshake(stream, addr).await?)
        } else {
            let (sender, conn) = http1::Builder::new()
                .handshake(TokioIo::new(stream))
                .await
                .map_err(io::Error::other)?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(backend = %addr, error = %e, "backend connection ended");
                }
            });
            Kind::Http1(sender)
        };
        Ok(Sender {
            kind,
            profile: self.profile,
        })
    }
}

/// Why TLS to a backend failed. The handshake's error may name the
/// backend (its address, its certificate's names): it is for the logs;
/// [`public_reason`] says what a client may be told.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS: {0}")]
    Handshake(io::Error),
    #[error("TLS: the backend did not agree to h2 (ALPN)")]
    NoH2,
}

/// Why a backend connection could not be opened, in words that name
/// neither the backend nor anything of its certificate: what a client
/// may be told, while the whole error goes to the logs.
pub fn public_reason(e: &io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    {
        Some(TlsError::Handshake(_)) => "the TLS handshake failed",
        Some(TlsError::NoH2) => "the backend did not agree to h2 (ALPN)",
        None => match e.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused",
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => "connection reset",
            io::ErrorKind::TimedOut => "timed out",
            _ => "connection failed",
        },
    }
}

fn tls_connector(pool: &PoolConfig) -> io::Result<TlsConnector> {
    let Some(tls) = &pool.tls else {
        return Err(io::Error::other("no tls"));
    };
    let alpn: &[&[u8]] = match pool.backend_protocol {
        BackendProtocol::H2 => &[b"h2"],
        _ => &[b"http/1.1"],
    };
    let config = tls_client::client_config(tls.ca.as_deref(), tls.verify, alpn)?;
    Ok(TlsConnector::from(config))
}

/// A connection ready for one request.
pub struct Sender {
    kind: Kind,
    profile: u64,
}

enum Kind {
    Http1(http1::SendRequest<BackendRequestBody>),
    Http2(h2_client::Connection),
    /// geolb's own client: the connection itself, until a request takes
    /// it (its response puts it back in the idle list when done).
    Own(Option<(h1::Kept, h1::Home)>),
}

/// What of a [`Sender`] goes back to the idle list when its answer has
/// been read: hyper's HTTP/1 connections only (an HTTP/2 one is shared,
/// never taken; geolb's own goes back by itself). A response's state
/// carries it until then, and is moved whole on each step: this is a
/// third of a sender's 88 bytes.
pub struct Returnable {
    sender: http1::SendRequest<BackendRequestBody>,
    profile: u64,
}

impl Sender {
    pub fn returnable(self) -> Option<Returnable> {
        match self.kind {
            Kind::Http1(sender) => Some(Returnable {
                sender,
                profile: self.profile,
            }),
            Kind::Http2(_) | Kind::Own(_) => None,
        }
    }

    fn own(conn: h1::Kept, home: h1::Home, profile: u64) -> Sender {
        Sender {
            kind: Kind::Own(Some((conn, home))),
            profile,
        }
    }

    /// Whether geolb's own HTTP/1 client sends on this connection (see
    /// [`Sender::send_own`]).
    pub fn is_own(&self) -> bool {
        matches!(self.kind, Kind::Own(_))
    }

    /// Sends `req` on a connection of geolb's own HTTP/1 client, as
    /// [`Sender::try_send_request`] does on the others'. With `as_read`,
    /// the response's fields may be kept as read ([`h1::ReadFields`],
    /// taken from its body) rather than in its map: for a caller that
    /// copies them out as they are.
    ///
    /// A method of its own, its future alone (688 bytes): in one `Either`
    /// with the other clients' futures (2,440 bytes, HTTP/2's the
    /// largest), it was made and then copied whole into the caller's
    /// place.
    pub fn send_own<'a>(
        &mut self,
        pending: &mut Option<Request<BackendRequestBody>>,
        added: &Added,
        as_read: bool,
        got: &'a mut Option<Response<BackendBody>>,
    ) -> impl Future<Output = Result<(), SendError>> + use<'a> {
        let Kind::Own(conn) = &mut self.kind else {
            unreachable!("sent by geolb's own client")
        };
        let Some((kept, home)) = conn.take() else {
            unreachable!("an own connection carries one request")
        };
        // Not in an async block of its own: that would keep the
        // connection and the request in its own places too, beside the
        // ones of the sending future made of them.
        h1::send(kept, home, pending, added, as_read, BackendBody::Own, got)
    }

    /// Sends `req` with the fields in `added` after its own, on an HTTP/2
    /// connection or one of hyper's HTTP/1 client (geolb's own client's
    /// are sent with [`Sender::send_own`]); a request the connection could
    /// not take (closed before it was written) comes back in the error.
    /// The response carries the backend's HTTP version: callers set the
    /// client's.
    ///
    /// The request is taken from `pending` (which holds one) where it is
    /// read, not handed down: each call it went through moved it once
    /// more (264 bytes). The response is put in `got` where it is made,
    /// not handed up: each future it went through, and the caller's wait
    /// with its timeout, moved it once more (240 bytes).
    pub fn try_send_request<'a>(
        &mut self,
        pending: &mut Option<Request<BackendRequestBody>>,
        added: &Added,
        got: &'a mut Option<Response<BackendBody>>,
    ) -> impl Future<Output = Result<(), SendError>> + use<'a> {
        let sender = match &mut self.kind {
            Kind::Http1(sender) => sender,
            Kind::Http2(connection) => return Either::Left(connection.send(pending, added, got)),
            Kind::Own(_) => unreachable!("geolb's own client sends with send_own"),
        };
        let Some(mut req) = pending.take() else {
            unreachable!("a request is sent from where it is kept")
        };
        added.copy_into(req.headers_mut());
        let hyper_side = sender.try_send_request(req);
        Either::Right(async move {
            match hyper_side.await {
                Ok(resp) => {
                    *got = Some(resp.map(BackendBody::Hyper));
                    Ok(())
                }
                Err(mut e) => {
                    let request = e.take_message();
                    Err(SendError::new(e.into_error().into(), request, None))
                }
            }
        })
    }
}

/// A backend's kept connections; per address, shared by every pool that
/// lists it and kept across reloads.
#[derive(Default)]
pub struct IdleConnections {
    http1: Mutex<Vec<Idle>>,
    http2: Mutex<Vec<(u64, h2_client::Connection)>>,
    http2_connecting: tokio::sync::Mutex<()>,
    /// geolb's own client's cleartext connections, shared with the
    /// responses that put theirs back.
    own: h1::Home,
    /// Its TLS ones, by profile: pools that speak TLS to this address
    /// differently (another CA, another name) keep theirs apart.
    own_tls: Mutex<Vec<(u64, h1::Home)>>,
}

struct Idle {
    sender: http1::SendRequest<BackendRequestBody>,
    since: Stamp,
    profile: u64,
}

impl IdleConnections {
    /// The most idle HTTP/1.1 connections kept; more are closed when put
    /// back, and, when a reload lowers it, the oldest past it at once.
    pub fn set_max_idle(&self, max: usize) {
        self.own.set_max(max);
        for (_, home) in crate::locked(&self.own_tls).iter() {
            home.set_max(max);
        }
        keep_newest(
            &mut self.http1.lock().unwrap_or_else(|e| e.into_inner()),
            max,
        );
    }

    /// Where geolb's own client keeps the connections of `profile`.
    #[inline]
    fn own_home(&self, profile: u64, now: Stamp) -> h1::Home {
        if profile == 0 {
            return self.own.clone();
        }
        self.own_tls_home(profile, now)
    }

    #[inline(never)]
    fn own_tls_home(&self, profile: u64, now: Stamp) -> h1::Home {
        let mut homes = crate::locked(&self.own_tls);
        // Other profiles' connections idle past the limit are closed here
        // too: after a reload that changed a pool's `tls`, no request of
        // the old profile comes to take (and close) them. Its home goes
        // once empty and let go by every response.
        homes.retain(|(p, home)| {
            *p == profile || home.close_expired(now) || Arc::strong_count(home) > 1
        });
        if let Some((_, home)) = homes.iter().find(|(p, _)| *p == profile) {
            return home.clone();
        }
        let home = h1::Home::default();
        home.max
            .store(self.own.max.load(Ordering::Relaxed), Ordering::Relaxed);
        homes.push((profile, home.clone()));
        home
    }

    /// The shared HTTP/2 connection of `profile`.
    fn shared_http2(&self, profile: u64) -> Option<Sender> {
        let mut shared = self.http2.lock().unwrap_or_else(|e| e.into_inner());
        shared.retain(|(_, s)| !s.is_closed());
        let (_, s) = shared.iter().find(|(p, _)| *p == profile)?;
        Some(Sender {
            kind: Kind::Http2(s.clone()),
            profile,
        })
    }

    /// The most recently used idle HTTP/1.1 connection of `profile` that
    /// still looks open, its age taken at `now`.
    fn take_http1(&self, profile: u64, now: Stamp) -> Option<Sender> {
        let mut conns = self.http1.lock().unwrap_or_else(|e| e.into_inner());
        // Newest first; stale ones met on the way are dropped.
        let mut at = conns.len();
        while at > 0 {
            at -= 1;
            let c = &conns[at];
            if c.sender.is_closed() || !young(c.since, now) {
                conns.remove(at);
            } else if c.profile == profile {
                return Some(Sender {
                    kind: Kind::Http1(conns.remove(at).sender),
                    profile,
                });
            }
        }
        None
    }

    /// Makes a new HTTP/2 connection the one shared for `profile`, unless
    /// another request opened one first.
    fn share(&self, profile: u64, sender: h2_client::Connection) {
        let mut shared = self.http2.lock().unwrap_or_else(|e| e.into_inner());
        shared.retain(|(_, s)| !s.is_closed());
        if !shared.iter().any(|(p, _)| *p == profile) {
            shared.push((profile, sender));
        }
    }

    /// Gives back a connection whose response ended cleanly.
    pub fn put(&self, sender: Sender) {
        if let Some(back) = sender.returnable() {
            self.put_back(back);
        }
    }

    /// A hyper connection whose answer was read to its end, kept for the
    /// next request if the list has room.
    pub fn put_back(&self, back: Returnable) {
        if back.sender.is_closed() {
            return;
        }
        let max = self.own.max.load(Ordering::Relaxed);
        let mut conns = self.http1.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() < max {
            conns.push(Idle {
                sender: back.sender,
                since: Stamp::now(),
                profile: back.profile,
            });
        }
    }

    pub fn len(&self) -> usize {
        self.http1.lock().unwrap_or_else(|e| e.into_inner()).len()
            + self.own.len()
            + crate::locked(&self.own_tls)
                .iter()
                .map(|(_, home)| home.len())
                .sum::<usize>()
            + self.http2.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::unread::{Unread, UnreadName};
    use super::{Added, h1};

    #[test]
    fn a_kept_host_goes_into_the_map_first_or_anywhere() {
        use http::header::{HOST, HeaderMap, HeaderValue};
        let map_of = |fields: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (n, v) in fields {
                map.append(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            map
        };
        let lines = |map: &HeaderMap| -> Vec<String> {
            map.iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect()
        };
        let fields = [("x-a", "1"), ("accept", "a"), ("x-a", "2"), ("x-b", "3")];
        for first in [true, false] {
            let mut added = Added::default();
            added.set_host(HeaderValue::from_static("h.example"));
            let mut map = map_of(&fields);
            added.host_into(&mut map, first);
            assert!(added.host().is_none(), "taken");
            let mut want = lines(&map_of(&fields));
            if first {
                want.insert(0, "host: h.example".into());
            } else {
                want.push("host: h.example".into());
            }
            assert_eq!(lines(&map), want, "first: {first}");
            // Nothing kept: nothing more.
            added.host_into(&mut map, first);
            assert_eq!(map.get_all(HOST).iter().count(), 1);
        }
        let mut added = Added::default();
        added.set_host(HeaderValue::from_static("h.example"));
        let mut empty = HeaderMap::new();
        added.host_into(&mut empty, true);
        assert_eq!(lines(&empty), ["host: h.example"]);
    }

    #[test]
    fn a_request_sent_again_carries_the_unread_fields_once() {
        let head = bytes::Bytes::from_static(b"GET / HTTP/1.1\r\nDNT: 1\r\n\r\n");
        let mut unread = Unread::new(head);
        unread.push(UnreadName::Dnt, [21, 22]);
        let mut added = Added::default();
        added.pass_unread(unread);
        added.push(
            &h1::X_FORWARDED_PROTO,
            super::AddedValue::Own(http::HeaderValue::from_static("http")),
        );
        let mut map = http::HeaderMap::new();
        added.copy_into(&mut map);
        // Given back by a connection that could not take it, then copied
        // into again for the next.
        added.copy_into(&mut map);
        assert_eq!(map.get_all("dnt").iter().collect::<Vec<_>>(), ["1"]);
        assert_eq!(map.get_all("x-forwarded-proto").iter().count(), 1);
    }

    /// A client's body as frames come: data chunks, then an end or an error.
    struct Frames(std::collections::VecDeque<std::io::Result<hyper::body::Frame<bytes::Bytes>>>);

    impl hyper::body::Body for Frames {
        type Data = bytes::Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<std::io::Result<hyper::body::Frame<bytes::Bytes>>>> {
            std::task::Poll::Ready(self.0.pop_front())
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn client_body(chunks: &[usize]) -> super::ClientBody {
        let frames = chunks
            .iter()
            .map(|&n| Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![b'x'; n]))))
            .collect();
        let inner = super::RequestBody::Own(Box::pin(Frames(frames)));
        super::ClientBody::new(inner).0
    }

    /// The next frame's data length; None at the end, Err at an error.
    fn next_len(body: &mut super::ClientBody) -> Result<Option<usize>, ()> {
        use hyper::body::Body;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(body).poll_frame(&mut cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => Ok(frame.data_ref().map(|d| d.len())),
            std::task::Poll::Ready(Some(Err(_))) => Err(()),
            std::task::Poll::Ready(None) => Ok(None),
            std::task::Poll::Pending => panic!("these bodies never wait"),
        }
    }

    fn sent_of(body: &mut super::ClientBody, frames: usize) -> super::Sent {
        let mut sent = super::Sent::default();
        for _ in 0..frames {
            let len = next_len(body).unwrap().expect("a frame");
            let frame = hyper::body::Frame::data(bytes::Bytes::from(vec![b'x'; len]));
            assert!(sent.record(&frame));
        }
        sent
    }

    /// Sent again, a body gives what it gave before from its first byte,
    /// then what it had not given yet, and says how much is left; cut
    /// short again while doing so, it still gives all of it in order.
    #[test]
    fn a_body_sent_again_gives_what_it_sent_first_then_goes_on() {
        use hyper::body::Body;
        let mut body = client_body(&[10, 20, 30]);
        let sent = sent_of(&mut body, 2);
        body.send_again_first(sent);
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().lower(), 30);
        let again = sent_of(&mut body, 1);
        assert_eq!(body.size_hint().lower(), 20);
        body.send_again_first(again);
        let all: Vec<_> = std::iter::from_fn(|| next_len(&mut body).unwrap()).collect();
        assert_eq!(all, [10, 20, 30]);
        assert!(body.is_end_stream());
        // Nothing sent: the body as it was.
        let mut body = client_body(&[5]);
        body.send_again_first(super::Sent::default());
        assert!(matches!(body.inner, super::RequestBody::Own(_)));
    }

    /// Trailers sent go again too, after the data and as the end.
    #[test]
    fn a_body_sent_again_gives_its_trailers_last() {
        use hyper::body::{Body, Frame};
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = [
            Ok(Frame::data(bytes::Bytes::from_static(b"abc"))),
            Ok(Frame::trailers(trailers)),
        ];
        let inner = super::RequestBody::Own(Box::pin(Frames(frames.into_iter().collect())));
        let mut body = super::ClientBody::new(inner).0;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut poll =
            |body: &mut super::ClientBody| match std::pin::Pin::new(body).poll_frame(&mut cx) {
                std::task::Poll::Ready(Some(Ok(frame))) => Some(frame),
                _ => None,
            };
        let mut sent = super::Sent::default();
        while let Some(frame) = poll(&mut body) {
            assert!(sent.record(&frame));
        }
        body.send_again_first(sent);
        assert!(!body.is_end_stream());
        let data = poll(&mut body).expect("the data again");
        assert_eq!(data.data_ref().map(|d| &d[..]), Some(&b"abc"[..]));
        let last = poll(&mut body).expect("the trailers again");
        assert_eq!(
            last.trailers_ref().and_then(|t| t.get("grpc-status")),
            Some(&http::HeaderValue::from_static("0"))
        );
        assert!(body.is_end_stream());
        assert!(poll(&mut body).is_none());
    }

    /// What goes again was counted against `max_body` the first time, not
    /// again; the bound of what is kept is `KEEP_FOR_RESENDING` bytes.
    #[test]
    fn a_body_sent_again_is_counted_once_and_kept_up_to_its_bound() {
        let mut body = client_body(&[10, 10]);
        body.limit(25);
        let sent = sent_of(&mut body, 2);
        body.send_again_first(sent);
        // Cut short again after one: the second comes from the first
        // sending's record, still not counted.
        let again = sent_of(&mut body, 1);
        body.send_again_first(again);
        let all: Vec<_> = std::iter::from_fn(|| next_len(&mut body).unwrap()).collect();
        assert_eq!(all, [10, 10]);

        // Past two chunks, the rest is copied: given again as one.
        let mut body = client_body(&[1, 2, 3, 4, 5]);
        let sent = sent_of(&mut body, 5);
        body.send_again_first(sent);
        let all: Vec<_> = std::iter::from_fn(|| next_len(&mut body).unwrap()).collect();
        assert_eq!(all, [1, 2, 12]);

        let half = super::KEEP_FOR_RESENDING as usize / 2;
        let chunk = |n| hyper::body::Frame::data(bytes::Bytes::from(vec![b'x'; n]));
        let mut sent = super::Sent::default();
        assert!(sent.record(&chunk(half)));
        assert!(sent.record(&chunk(half)), "the bound itself is kept");
        assert!(!sent.record(&chunk(1)));
    }

    /// Scanned (few names) or hashed (many), a map is searched alike.
    #[test]
    fn fields_are_found_by_scan_or_by_hash_alike() {
        use http::header::{self, HeaderMap, HeaderValue};
        for names in [1, super::SCANNED_NAMES, super::SCANNED_NAMES + 1, 40] {
            let mut map = HeaderMap::new();
            for i in 0..names - 1 {
                map.append(
                    format!("x-f{i}").parse::<header::HeaderName>().unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            assert!(!super::has_field(&map, &header::HOST), "{names}");
            assert_eq!(
                super::first_field(&map, &header::HOST),
                (None, false),
                "{names}"
            );
            map.append(header::HOST, HeaderValue::from_static("a"));
            assert_eq!(map.keys_len(), names);
            assert!(super::has_field(&map, &header::HOST), "{names}");
            assert!(
                !super::has_field(&map, &header::TRANSFER_ENCODING),
                "{names}"
            );
            let one = super::first_field(&map, &header::HOST);
            assert_eq!(
                one,
                (Some(&HeaderValue::from_static("a")), false),
                "{names}"
            );
            if names > 1 {
                // A map holding more values than names, none of them Host's.
                map.append("x-f0", HeaderValue::from_static("w"));
                let still_one = super::first_field(&map, &header::HOST);
                let a = HeaderValue::from_static("a");
                assert_eq!(still_one, (Some(&a), false), "{names}");
            }
            map.append(header::HOST, HeaderValue::from_static("b"));
            let two = super::first_field(&map, &header::HOST);
            assert_eq!(two, (Some(&HeaderValue::from_static("a")), true), "{names}");
        }
    }

    /// A message takes the map put in, in place of its first one (let go
    /// without its drop) or of one that had room (dropped).
    #[test]
    fn a_message_takes_its_map_whatever_it_had() {
        use http::header::{HeaderMap, HeaderValue};
        let mut req = http::Request::new(());
        let mut map = HeaderMap::new();
        map.insert("x-a", HeaderValue::from_static("1"));
        super::put_headers(req.headers_mut(), map);
        assert_eq!(req.headers()["x-a"], "1");
        let mut again = HeaderMap::with_capacity(4);
        again.insert("x-b", HeaderValue::from_static("2"));
        super::put_headers(req.headers_mut(), again);
        assert_eq!(req.headers().len(), 1);
        assert_eq!(req.headers()["x-b"], "2");
    }
}
