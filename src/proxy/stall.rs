//! HTTP/2 responses that the client lets nothing through for the `idle`
//! timeout (CVE-2019-9517's class: a flow-control window held closed).
//!
//! Over HTTP/1 a client that stops reading stops the connection's bytes,
//! and the idle timeout cuts it. Over HTTP/2 the connection may stay busy
//! (PINGs, other streams) while one stream's window stays closed: hyper
//! then waits for window and never asks the body for more, so the backend
//! connection behind it would be held for as long as the client likes.
//!
//! Each HTTP/2 response streamed from a backend is watched: the time it
//! last handed hyper a frame is noted, and once hyper has not come back
//! for the next one within `idle` while the backend had data ready (it
//! was not waiting on the backend), the response is dropped: the backend
//! body goes (its connection closes rather than being reused), the request
//! is counted, and hyper resets the stream when it next polls it. A
//! stream the client never opens its window for again keeps hyper's few
//! hundred bytes until the connection ends, which the connection's idle
//! timeout sees to (it no longer counts as an open request).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::body::ResponseBody;
use crate::locked;
use crate::metrics::HTTP_STALLED;
use crate::spares::Recycled;
use crate::stamp::Stamp;

/// `Watched::since` while the body waits on its backend: not a stall.
const ON_BACKEND: u64 = u64::MAX;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The watched responses of one HTTP/2 connection.
pub struct Stalls {
    origin: Stamp,
    open: Mutex<Vec<Weak<Watched>>>,
}

struct Watched {
    /// `None` once cut. In a block of the thread's: moved whole into the
    /// `Arc` (480 bytes), the body was copied three times on its way
    /// (`CLIENT=h2 benches/instructions.sh`).
    body: Mutex<Option<Pin<Recycled<ResponseBody>>>>,
    /// Ms since `Stalls::origin` when a frame was last handed over, or
    /// [`ON_BACKEND`].
    since: AtomicU64,
    origin: Stamp,
}

/// A response body under watch: what hyper streams in its place.
pub struct WatchedBody(Arc<Watched>);

impl Stalls {
    pub fn new() -> Stalls {
        Stalls {
            origin: Stamp::now(),
            open: Mutex::new(Vec::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        Stamp::now().millis_since(self.origin)
    }

    /// `body`, watched from now on.
    pub fn watch(&self, body: ResponseBody) -> WatchedBody {
        let watched = Arc::new(Watched {
            body: Mutex::new(Some(Recycled::pin(body))),
            since: AtomicU64::new(self.now_ms()),
            origin: self.origin,
        });
        let mut open = locked(&self.open);
        // Ended responses leave their place here; clearing them when the
        // list would grow keeps it at most twice the streams open.
        if open.len() == open.capacity() {
            open.retain(|w| w.strong_count() > 0);
        }
        open.push(Arc::downgrade(&watched));
        WatchedBody(watched)
    }

    /// Cuts each response stalled for `idle`, counted under the listener
    /// `name` gives (asked only then); runs until the connection ends
    /// (never returns).
    ///
    /// It looks again within `idle` of each look, also with nothing to
    /// watch, and so needs no word of a response added: one added after a
    /// look is due no sooner than `idle` after it. Woken for each added
    /// response, it ran once a request over HTTP/2 (a small answer is sent
    /// and dropped before the connection's task looks), for nothing: that
    /// and a clock read for each stream's timer (`proxy::http`) were 542
    /// instructions a request (`CLIENT=h2 benches/instructions.sh`: 48,874
    /// to 48,332).
    pub async fn cut_stalled(&self, idle: Duration, name: impl Fn() -> String) {
        // At least a millisecond: it sleeps `idle` between looks, and a
        // zero would spin.
        let idle_ms = (idle.as_millis() as u64).max(1);
        loop {
            let now = self.now_ms();
            let mut next = now + idle_ms;
            let mut cut = Vec::new();
            locked(&self.open).retain(|w| {
                let Some(watched) = w.upgrade() else {
                    return false;
                };
                let since = watched.since.load(Ordering::Relaxed);
                if since == ON_BACKEND {
                    return true;
                }
                if now >= since + idle_ms {
                    cut.push(watched);
                    return false;
                }
                next = next.min(since + idle_ms);
                true
            });
            // Dropped outside the list's lock: dropping a response settles
            // it (metrics, access log, the backend connection).
            for watched in cut {
                // Taken under the lock, dropped (settled) after it.
                let body = locked(&watched.body).take();
                if body.is_some() {
                    let listener = name();
                    tracing::debug!(
                        listener,
                        "HTTP/2 response stalled by the client's window: cut"
                    );
                    ::metrics::counter!(HTTP_STALLED, "listener" => listener).increment(1);
                }
                drop(body);
            }
            let due = self.origin.after(Duration::from_millis(next));
            tokio::time::sleep_until(due.instant()).await;
        }
    }
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let watched = &*self.0;
        let mut body = locked(&watched.body);
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(Some(Err(
                "the client let no byte of the response through for the idle timeout".into(),
            )));
        };
        let polled = inner.as_mut().poll_frame(cx);
        let since = match &polled {
            Poll::Pending => ON_BACKEND,
            Poll::Ready(_) => Stamp::now().millis_since(watched.origin),
        };
        watched.since.store(since, Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        // A cut body has not ended: hyper must poll it for the error and
        // reset the stream, not end it as if complete.
        locked(&self.0.body)
            .as_ref()
            .is_some_and(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        locked(&self.0.body)
            .as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}
