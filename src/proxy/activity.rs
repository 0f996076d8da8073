//! The `header` and `idle` timeouts of a client connection.
//!
//! hyper's own header timer starts when it waits for a head, so it would
//! also cut idle keep-alive connections after `header`; the contract wants
//! `header` counted from a request's first byte and `idle` for silence. The
//! connection's I/O is wrapped to note every byte moved and whether a head
//! is being read; one watchdog per connection compares those with the clock.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

const WAITING: u8 = 0;
const READING_HEAD: u8 = 1;
const IN_REQUEST: u8 = 2;

pub struct Activity {
    origin: Instant,
    /// Milliseconds since `origin` of the last byte moved either way.
    last_io: AtomicU64,
    /// When the head now being read started, in ms since `origin`.
    head_started: AtomicU64,
    phase: AtomicU8,
    /// Requests whose response has not ended yet.
    open_requests: AtomicU64,
    /// Set by the connection's first request, for [`Activity::first_request`].
    any_request: AtomicBool,
    first: Notify,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            origin: Instant::now(),
            last_io: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            phase: AtomicU8::new(WAITING),
            open_requests: AtomicU64::new(0),
            any_request: AtomicBool::new(false),
            first: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn touch(&self, read: bool) {
        let now = self.now_ms();
        self.last_io.store(now, Ordering::Relaxed);
        if read
            && self
                .phase
                .compare_exchange(WAITING, READING_HEAD, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.head_started.store(now, Ordering::Relaxed);
        }
    }

    /// A head has been parsed: the header timer stops.
    pub fn request_started(&self) {
        self.open_requests.fetch_add(1, Ordering::Relaxed);
        self.phase.store(IN_REQUEST, Ordering::Relaxed);
        if !self.any_request.load(Ordering::Relaxed) {
            self.any_request.store(true, Ordering::Release);
            self.first.notify_waiters();
        }
    }

    /// Resolves once the connection has had a request. A shutdown waits
    /// for it before closing: a connection accepted just before its
    /// listener stopped gets its first request answered, not dropped.
    pub async fn first_request(&self) {
        let notified = self.first.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.any_request.load(Ordering::Acquire) {
            return;
        }
        notified.await
    }

    /// A response has ended: the next byte read starts a new head.
    pub fn request_ended(&self) {
        if self.open_requests.fetch_sub(1, Ordering::Relaxed) == 1 {
            let _ = self.phase.compare_exchange(
                IN_REQUEST,
                WAITING,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Resolves when the connection should be cut, with the reason.
    /// `header: None` for streams without heads (tunnels).
    pub async fn watchdog(&self, header: Option<Duration>, idle: Duration) -> &'static str {
        let header_ms = header.map(|h| h.as_millis() as u64);
        let idle_ms = idle.as_millis() as u64;
        loop {
            let now = self.now_ms();
            let idle_deadline = self.last_io.load(Ordering::Relaxed) + idle_ms;
            if now >= idle_deadline {
                return "idle timeout";
            }
            let mut deadline = idle_deadline;
            if let Some(header_ms) = header_ms {
                if self.phase.load(Ordering::Relaxed) == READING_HEAD {
                    let header_deadline = self.head_started.load(Ordering::Relaxed) + header_ms;
                    if now >= header_deadline {
                        return "header timeout";
                    }
                    deadline = deadline.min(header_deadline);
                } else {
                    // Nothing signals a head starting (that would cost a
                    // wake-up per request); looking again within `header`
                    // is enough to cut a slow head exactly on time.
                    deadline = deadline.min(now + header_ms);
                }
            }
            tokio::time::sleep_until(self.origin + Duration::from_millis(deadline)).await;
        }
    }
}

/// An I/O object that reports its traffic to an [`Activity`].
pub struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        TrackedIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch(true);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch(false);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch(false);
        }
        result
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
