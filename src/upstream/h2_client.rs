//! geolb's HTTP/2 client: the `h2` crate's streams, opened and read from
//! the request's own task.
//!
//! hyper's HTTP/2 client put a channel and a task between a request and
//! its stream: the request was queued to the connection's dispatch, which
//! opened the stream and ran a future of its own that waited for the
//! response and sent it back through a one-shot channel. Here the
//! request's task opens the stream and waits on it itself; the
//! connection's task only reads and writes frames. A body going up is the
//! one thing still sent from a task of its own ([`pipe`]): it may go on
//! after the response has come back (an early answer).

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::{Method, Request, Response, header};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::{Added, BackendBody, BackendError, BackendRequestBody, SendError, Sent};
use crate::held_writes::{self, HeldWrites};

// hyper's client defaults, kept: the windows let a 64 KiB answer come in
// one round trip, and the rest bound what a backend can make geolb hold.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// An HTTP/2 connection to a backend, shared by the requests on it.
#[derive(Clone)]
pub struct Connection {
    send: SendRequest<Bytes>,
    /// Set when the connection's task has ended, or a request found the
    /// connection unable to open a stream.
    closed: Arc<AtomicBool>,
}

impl Connection {
    /// Speaks HTTP/2 by prior knowledge over `stream` (cleartext, or TLS
    /// that agreed to h2) and starts the task that reads and writes its
    /// frames.
    pub async fn handshake<S>(stream: S, addr: SocketAddr) -> io::Result<Connection>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let stream = HeldWrites::new(stream);
        let held = stream.drainer();
        let (send, connection) = h2::client::Builder::new()
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .enable_push(false)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(io::Error::other)?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        // Ends when the backend closes, or once no request and no idle
        // list holds the connection any more (h2 then says GOAWAY).
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended_with = held_writes::drained(connection.as_mut(), Some(&held)).await;
            if let Err(e) = ended_with {
                tracing::debug!(backend = %addr, error = %e, "backend connection ended");
            }
            ended.store(true, Ordering::Release);
        });
        Ok(Connection { send, closed })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends the request in `pending` with the fields in `added`; a
    /// request the connection had no stream for, or that the backend did
    /// not act on ([`BackendError::unprocessed`]) with a body of up to
    /// [`super::KEEP_FOR_RESENDING`] bytes, comes back in the error.
    pub fn send<'a>(
        &self,
        pending: &mut Option<Request<BackendRequestBody>>,
        added: &Added,
        got: &'a mut Option<Response<BackendBody>>,
    ) -> impl Future<Output = Result<(), SendError>> + use<'a> {
        let Some(mut req) = pending.take() else {
            unreachable!("a request is sent from where it is kept")
        };
        added.copy_into(req.headers_mut());
        let mut send = self.send.clone();
        let closed = self.closed.clone();
        async move {
            if let Err(e) = poll_fn(|cx| send.poll_ready(cx)).await {
                closed.store(true, Ordering::Release);
                return Err(SendError::new(BackendError::H2(e), Some(req), None));
            }
            let (parts, body) = req.into_parts();
            let mut head = Request::from_parts(parts, ());
            let end = body.is_end_stream();
            set_length(&mut head, &body);
            // A body-less request is made again from the caller's copy
            // (`Replay`), if it may be; one with a body only from here.
            let again = (!end
                && matches!(body, http_body_util::Either::Left(_))
                && body.size_hint().lower() <= super::KEEP_FOR_RESENDING)
                .then(|| copy_head(&head));
            let (response, mut stream) = match send.send_request(head, end) {
                Ok(sent) => sent,
                // Nothing went: the connection went away since
                // `poll_ready` (the request may go on another), or h2
                // refused the head (it would refuse it again).
                Err(e) => {
                    let gone = e.is_go_away() || e.is_io();
                    if gone {
                        closed.store(true, Ordering::Release);
                    }
                    let request = again.filter(|_| gone).map(|head| head.map(|()| body));
                    return Err(SendError::new(BackendError::H2(e), request, None));
                }
            };
            let mut upload = Upload::Here(body, None);
            if let (false, Upload::Here(body, kept)) = (end, &mut upload) {
                // What of the body is here goes now, from this task (the
                // usual small upload, whole); only the rest of one that is
                // not (or that is past the window) goes on from a task of
                // its own, with what was kept of it so far.
                let (mut held, mut at_once) = (None, AT_ONCE);
                *kept = again.is_some().then(Sent::default);
                let now = poll_fn(|cx| {
                    Poll::Ready(send_body(
                        body,
                        &mut stream,
                        &mut held,
                        kept,
                        &mut at_once,
                        cx,
                    ))
                });
                match now.await {
                    Poll::Ready(Ok(())) => drop(stream),
                    // The stream's end tells the response too.
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, "request body not sent whole");
                        drop(stream);
                    }
                    Poll::Pending => upload = upload.go_on(stream, held),
                }
            } else {
                // Nothing to send: the stream is let go now. Held until
                // the answer, it cost h2's stream store 170 instructions
                // a request more (`BACKEND_PROTO=h2c
                // benches/instructions.sh`).
                drop(stream);
            }
            let response = match response.await {
                Ok(response) => response,
                Err(e) => {
                    let error = BackendError::H2(e);
                    let mut request = None;
                    if let (true, Some(head)) = (error.unprocessed(), again) {
                        request = upload.give_back().await.map(|body| head.map(|()| body));
                    }
                    return Err(SendError::new(error, request, None));
                }
            };
            upload.answered();
            let (parts, recv) = response.into_parts();
            let body = ResponseBody::new(recv, &parts.headers);
            *got = Some(Response::from_parts(parts, BackendBody::H2(body)));
            Ok(())
        }
    }
}

/// How much of a body that is already here goes with its head, from the
/// request's task and before the stream's window is known: an upload of
/// usual size whole, with no task of its own.
const AT_ONCE: usize = 16 * 1024;

/// A request's body on its way to the backend.
enum Upload {
    /// Sent whole from the request's task (or none), with what of it was
    /// kept to go again.
    Here(BackendRequestBody, Option<Sent>),
    /// The rest going from a task of its own ([`pipe`]), which gives the
    /// body back at its end.
    Piping(
        CancelOnDrop,
        tokio::task::JoinHandle<Option<BackendRequestBody>>,
    ),
}

impl Upload {
    /// The rest of the body goes from a task of its own.
    fn go_on(self, stream: SendStream<Bytes>, held: Option<(Bytes, bool)>) -> Upload {
        let Upload::Here(body, kept) = self else {
            return self;
        };
        let (cancel, cancelled) = oneshot::channel();
        let piping = tokio::spawn(pipe(body, stream, held, kept, cancelled));
        Upload::Piping(CancelOnDrop(Some(cancel)), piping)
    }

    /// The body, to go again with what it sent first; none when it was
    /// not kept whole.
    async fn give_back(self) -> Option<BackendRequestBody> {
        match self {
            Upload::Here(body, kept) => again_first(body, kept?),
            // The pipe stops at once (if the stream's end had not already
            // stopped it) and gives the body back.
            Upload::Piping(cancel, piping) => {
                drop(cancel);
                piping.await.ok().flatten()
            }
        }
    }

    /// The response came: a body still going goes on, no longer kept.
    fn answered(self) {
        if let Upload::Piping(mut cancel, _) = self {
            cancel.0.take();
        }
    }
}

/// The head as sent, for sending again: h2 takes the one it sends.
fn copy_head(head: &Request<()>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = head.method().clone();
    *copy.uri_mut() = head.uri().clone();
    *copy.version_mut() = head.version();
    *copy.headers_mut() = head.headers().clone();
    copy
}

/// A body whose length is known but not written gets a `Content-Length`
/// (as hyper's client gives it), so that the backend need not wait for
/// the stream's end to know it; the empty body of a GET, a HEAD or a
/// DELETE none (hyper's rule too).
fn set_length(head: &mut Request<()>, body: &BackendRequestBody) {
    let Some(len) = body.size_hint().exact() else {
        return;
    };
    if len == 0 && matches!(*head.method(), Method::GET | Method::HEAD | Method::DELETE) {
        return;
    }
    if !head.headers().contains_key(header::CONTENT_LENGTH) {
        head.headers_mut()
            .insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
    }
}

/// Held by a request waiting for its response while its body is still
/// being sent: dropped before the response came (a timeout, a client gone),
/// it resets the stream, so that the backend stops waiting for the rest.
struct CancelOnDrop(Option<oneshot::Sender<()>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            let _ = cancel.send(());
        }
    }
}

/// Sends a request's body on its stream, as the stream's window allows;
/// stops at a reset from the backend (an early answer) or from the
/// request ([`CancelOnDrop`]). Until the response comes, what it sent
/// is kept (up to [`super::KEEP_FOR_RESENDING`] bytes), and the body
/// given back at the end to go again with it first (the task's own
/// output: no channel of its own).
async fn pipe(
    mut body: BackendRequestBody,
    mut stream: SendStream<Bytes>,
    mut held: Option<(Bytes, bool)>,
    mut kept: Option<Sent>,
    mut cancelled: oneshot::Receiver<()>,
) -> Option<BackendRequestBody> {
    let mut answered = false;
    let sent = poll_fn(|cx| {
        if !answered {
            match Pin::new(&mut cancelled).poll(cx) {
                Poll::Ready(Ok(())) => {
                    stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(Ok(()));
                }
                // The response came: the body goes on, no longer kept.
                Poll::Ready(Err(_)) => (answered, kept) = (true, None),
                Poll::Pending => {}
            }
        }
        send_body(&mut body, &mut stream, &mut held, &mut kept, &mut 0, cx)
    })
    .await;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "request body not sent whole");
    }
    again_first(body, kept?)
}

/// A client's body, to be sent again with what it sent (`kept`) first.
fn again_first(mut body: BackendRequestBody, kept: Sent) -> Option<BackendRequestBody> {
    let http_body_util::Either::Left(client) = &mut body else {
        return None;
    };
    client.send_again_first(kept);
    Some(body)
}

/// A chunk read from the body waits in `held` (with whether it is the
/// last) until the stream's window has room for some of it. What is read
/// goes into `kept` too while it is kept, and ends it when it is more
/// than is kept, or fails.
///
/// Up to `at_once` bytes of chunks go without waiting for the window (h2
/// holds them until it allows): the start of a body, sent with its head.
fn send_body(
    body: &mut BackendRequestBody,
    stream: &mut SendStream<Bytes>,
    held: &mut Option<(Bytes, bool)>,
    kept: &mut Option<Sent>,
    at_once: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<Result<(), h2::Error>> {
    loop {
        if let Poll::Ready(reason) = stream.poll_reset(cx)? {
            return Poll::Ready(Err(h2::Error::from(reason)));
        }
        if held.is_some() {
            while stream.capacity() == 0 {
                match ready!(stream.poll_capacity(cx)) {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Poll::Ready(Err(e)),
                    None => return Poll::Ready(Err(h2::Error::from(Reason::CANCEL))),
                }
            }
            let Some((chunk, end)) = held.take() else {
                unreachable!("checked above")
            };
            stream.send_data(chunk, end)?;
            if end {
                return Poll::Ready(Ok(()));
            }
            continue;
        }
        let polled = ready!(Pin::new(&mut *body).poll_frame(cx));
        let whole = match &polled {
            Some(Ok(frame)) => kept.as_mut().is_none_or(|sent| sent.record(frame)),
            Some(Err(_)) => false,
            None => true,
        };
        if !whole {
            *kept = None;
        }
        match polled {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    let end = body.is_end_stream();
                    if chunk.len() <= *at_once {
                        *at_once -= chunk.len();
                        stream.send_data(chunk, end)?;
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    // Capacity is asked for only with a chunk in hand, and
                    // a byte of it: asked for ahead, or all of it, it pins
                    // the connection's window against streams that send
                    // nothing (hyper #4003); h2 asks for the rest as the
                    // chunk goes.
                    stream.reserve_capacity(1);
                    *held = Some((chunk, end));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        stream.reserve_capacity(0);
                        stream.send_trailers(trailers)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            },
            Some(Err(e)) => {
                let reason = reason_of(&*e).unwrap_or(Reason::INTERNAL_ERROR);
                stream.send_reset(reason);
                return Poll::Ready(Err(h2::Error::from(reason)));
            }
            None => {
                stream.send_data(Bytes::new(), true)?;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// The HTTP/2 reason a client's body failed with, when it came over
/// HTTP/2 too (a client's reset is passed on as it was).
fn reason_of(e: &(dyn std::error::Error + 'static)) -> Option<Reason> {
    let mut source = Some(e);
    while let Some(e) = source {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return Some(reason);
        }
        source = e.source();
    }
    None
}

/// A response's body as its stream brings it; what is read is given back
/// to the stream's window at once.
pub struct ResponseBody {
    recv: RecvStream,
    data_done: bool,
    /// What `Content-Length` said is left, when it said.
    left: Option<u64>,
}

impl ResponseBody {
    fn new(recv: RecvStream, headers: &http::HeaderMap) -> ResponseBody {
        // Several lines or a bad one: no size given (h2 checks the data
        // against them all the same).
        let said = super::h1::content_length(headers.get_all(header::CONTENT_LENGTH).iter());
        let left = match said.ok().flatten() {
            None if recv.is_end_stream() => Some(0),
            said => said,
        };
        ResponseBody {
            recv,
            data_done: false,
            left,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BackendError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BackendError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut this.left {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // A reset with NO_ERROR ends an answer that came before the
                // request was all sent (RFC 9113 §8.1): the answer is whole.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(BackendError::H2(e)))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(BackendError::H2(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.left
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
