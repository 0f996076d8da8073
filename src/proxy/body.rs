//! Bodies on the proxy path: streamed, never buffered whole.
//!
//! [`ResponseBody`] carries what must happen when a response ends: the
//! backend connection goes back to the idle list (only after a clean end),
//! the active count drops, and the request is counted and logged once.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::activity::Activity;
use super::compress::Compressing;
use crate::accesslog;
use crate::admission::RetryGuard;
use crate::metrics::{BackendMetrics, RouteMetrics};
use crate::stamp::Stamp;
use crate::state::ActiveGuard;
use crate::upstream::{BackendBody, BodyProgress, BodyState, Returnable};

/// What to do when a response ends, however it ends.
pub struct Completion {
    pub start: Stamp,
    pub status: u16,
    pub metrics: Arc<RouteMetrics>,
    /// Told when the response ends, for the connection's header timer.
    pub activity: Arc<Activity>,
    pub active: Option<ActiveGuard>,
    /// A place in the pool's retry budget, for a retried request.
    pub retry: Option<RetryGuard>,
    /// Returned to the backend's idle list after a clean end of body.
    pub sender: Option<Returnable>,
    pub bytes: u64,
    /// Body bytes the backend sent, where not `bytes` (compressed on the
    /// way).
    pub backend_bytes: Option<u64>,
    /// The backend that answered, for its series.
    pub backend: Option<Arc<BackendMetrics>>,
    /// The request's body, for the bytes it carried (metrics and the
    /// access log).
    pub request_body: Option<BodyProgress>,
    /// The access log's line, filled in as the request goes.
    pub access: Option<Box<accesslog::Http>>,
}

impl Completion {
    fn finish_clean(&mut self) {
        if let (Some(sender), Some(active)) = (self.sender.take(), self.active.as_ref()) {
            active.shared().idle.put_back(sender);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.activity.request_ended();
        if let Some(body) = &self.request_body
            && body.state() != BodyState::Ended
        {
            self.activity.left_a_body();
        }
        let elapsed = self.start.elapsed();
        self.metrics.record(self.status, elapsed);
        let bytes_in = self.request_body.as_ref().map_or(0, BodyProgress::received);
        self.metrics.http_bytes(bytes_in, self.bytes);
        if let Some(b) = &self.backend {
            b.bytes(bytes_in, self.backend_bytes.unwrap_or(self.bytes));
        }
        if let Some(a) = self.access.take() {
            a.emit(&accesslog::HttpEnd {
                status: self.status,
                bytes_sent: self.bytes,
                bytes_received: bytes_in,
                duration: elapsed,
            });
        }
    }
}

enum Inner {
    Backend(BackendBody),
    /// A backend's body compressed on the way (`compress`).
    Compressed(Box<Compressing>),
    Message(Option<Bytes>),
}

impl Inner {
    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Backend(body) => body.is_end_stream(),
            Inner::Compressed(body) => body.is_end_stream(),
            Inner::Message(text) => text.is_none(),
        }
    }
}

/// A body's error: the backend's, or the encoder's for a compressed one.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct ResponseBody {
    inner: Inner,
    completion: Option<Completion>,
}

impl ResponseBody {
    pub fn from_backend(body: BackendBody, completion: Completion) -> Self {
        Self::streamed(Inner::Backend(body), completion)
    }

    pub(super) fn compressed(body: Box<Compressing>, completion: Completion) -> Self {
        Self::streamed(Inner::Compressed(body), completion)
    }

    // Made whole in one place: a body made first and its completion put
    // in after copied both (150 instructions a request).
    fn streamed(inner: Inner, mut completion: Completion) -> Self {
        let completion = if inner.is_end_stream() {
            completion.finish_clean();
            None
        } else {
            Some(completion)
        };
        ResponseBody { inner, completion }
    }

    pub fn message(text: Bytes, completion: Option<Completion>) -> Self {
        ResponseBody {
            inner: Inner::Message(Some(text)),
            completion,
        }
    }

    pub fn empty() -> Self {
        ResponseBody {
            inner: Inner::Message(None),
            completion: None,
        }
    }

    /// The request's body, for an answer whose completion was made
    /// without it (geolb's own): its bytes, and whether the answer left
    /// it unread (see `Completion`'s drop).
    pub(super) fn note_request_body(&mut self, progress: BodyProgress) {
        if let Some(completion) = &mut self.completion
            && completion.request_body.is_none()
        {
            completion.request_body = Some(progress);
        }
    }

    /// Whether more is to come from a backend (rather than our own text).
    pub fn streams_from_backend(&self) -> bool {
        !matches!(self.inner, Inner::Message(_)) && !self.is_end_stream()
    }

    /// The backend's response fields, when they were kept as read (see
    /// [`crate::upstream::h1::ReadFields`]) rather than in the map.
    pub fn take_read_fields(&mut self) -> Option<Box<crate::upstream::h1::ReadFields>> {
        match &mut self.inner {
            Inner::Backend(b) => b.take_read_fields(),
            _ => None,
        }
    }

    /// Whether the rest of the body is a backend's bytes as they come,
    /// which can be taken straight from its socket ([`Self::poll_read_raw`]).
    pub fn reads_raw(&self) -> bool {
        matches!(&self.inner, Inner::Backend(b) if b.reads_raw())
    }

    /// Takes the body's next bytes straight from the backend's socket with
    /// `read` (see [`crate::upstream::h1::ResponseBody::poll_read_raw`]),
    /// counted as the frames of [`Body::poll_frame`] are; the response is
    /// complete with the last of them.
    pub fn poll_read_raw(
        &mut self,
        cx: &mut Context<'_>,
        read: impl FnMut(&tokio::net::TcpStream, usize) -> std::io::Result<usize>,
    ) -> Poll<std::io::Result<usize>> {
        let Inner::Backend(body) = &mut self.inner else {
            return Poll::Ready(Err(std::io::ErrorKind::Unsupported.into()));
        };
        let n = ready!(body.poll_read_raw(cx, read))?;
        if let Some(c) = self.completion.as_mut() {
            c.bytes += n as u64;
        }
        if self.is_end_stream() {
            self.end(true);
        }
        Poll::Ready(Ok(n))
    }

    /// Whether the body's next bytes are a backend's chunks that may go
    /// out with their framing as they came ([`Self::poll_raw_chunks`]).
    pub fn reads_chunks_raw(&self) -> bool {
        matches!(&self.inner, Inner::Backend(b) if b.reads_chunks_raw())
    }

    /// The body's next chunks with their framing as the backend sent them
    /// (see [`crate::upstream::h1::ResponseBody::poll_raw_chunks`]), their
    /// data counted as the frames of [`Body::poll_frame`] are; the
    /// response is complete with the last of them.
    pub fn poll_raw_chunks(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<crate::upstream::h1::RawChunks, BoxError>> {
        let Inner::Backend(body) = &mut self.inner else {
            return Poll::Ready(Ok(crate::upstream::h1::RawChunks::Frames));
        };
        let raw = ready!(body.poll_raw_chunks(cx))?;
        if let (crate::upstream::h1::RawChunks::Bytes(_, data), Some(c)) =
            (&raw, self.completion.as_mut())
        {
            c.bytes += data;
        }
        if self.is_end_stream() {
            self.end(true);
        }
        Poll::Ready(Ok(raw))
    }

    fn end(&mut self, clean: bool) {
        // Finished where it lies and dropped there: taken out, its 200
        // bytes were copied first.
        let Some(c) = self.completion.as_mut() else {
            return;
        };
        if let Inner::Compressed(body) = &self.inner {
            c.backend_bytes = Some(body.bytes_read());
        }
        if clean {
            c.finish_clean();
        }
        self.completion = None;
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.end(false);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match &mut this.inner {
            Inner::Message(text) => {
                // Not counted in `bytes`: those are the backends' (the
                // metric's contract).
                let text = text.take();
                // Counted and logged as its bytes go to the writer, not
                // when the writer lets the body go: a client that has the
                // answer finds it in the metrics (as hyper's server, which
                // drops a body at its end before writing, always did).
                this.end(true);
                return Poll::Ready(text.map(|t| Ok(Frame::data(t))));
            }
            Inner::Backend(body) => {
                ready!(Pin::new(&mut *body).poll_frame(cx)).map(|r| r.map_err(BoxError::from))
            }
            Inner::Compressed(body) => ready!(body.poll_frame(cx)),
        };
        match frame {
            Some(Ok(frame)) => {
                if let (Some(data), Some(c)) = (frame.data_ref(), this.completion.as_mut()) {
                    c.bytes += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.end(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                this.end(true);
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                this.end(false);
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Backend(body) => body.size_hint(),
            // Unknown until the encoder is done: HTTP/1.1 then goes chunked.
            Inner::Compressed(_) => SizeHint::default(),
            Inner::Message(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}
