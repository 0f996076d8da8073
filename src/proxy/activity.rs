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

use nix::time::ClockId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

const WAITING: u8 = 0;
const READING_HEAD: u8 = 1;
const IN_REQUEST: u8 = 2;

pub struct Activity {
    origin: Instant,
    /// `origin` on the monotonic clock, in ms, for [`Activity::coarse_ms`].
    origin_ms: u64,
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
    /// The client speaks HTTP/2 (its preface was read).
    h2: AtomicBool,
    /// The connection carries a tunnel (an upgrade was answered 101): what
    /// is read from here on are no heads.
    tunnel: AtomicBool,
    /// When the last request ended (or the connection began) in ms since
    /// `origin`: an HTTP/2 connection's idle time counts from it.
    quiet_since: AtomicU64,
    /// An answer was given with (some of) its request's body unread: the
    /// client may still be sending when the connection closes.
    body_left: AtomicBool,
}

/// `clock` in ms; 0 if it cannot be read (it always can on Linux: the
/// monotonic clocks are in the vDSO).
fn monotonic_ms(clock: ClockId) -> u64 {
    nix::time::clock_gettime(clock).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000 + t.tv_nsec() as u64 / 1_000_000
    })
}

/// The watchdog's reason for an idle connection.
pub const IDLE_TIMEOUT: &str = "idle timeout";

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            origin: Instant::now(),
            origin_ms: monotonic_ms(ClockId::CLOCK_MONOTONIC),
            last_io: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            phase: AtomicU8::new(WAITING),
            open_requests: AtomicU64::new(0),
            any_request: AtomicBool::new(false),
            first: Notify::new(),
            h2: AtomicBool::new(false),
            tunnel: AtomicBool::new(false),
            quiet_since: AtomicU64::new(0),
            body_left: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// [`Activity::now_ms`] from the clock the kernel keeps at its last
    /// tick (a few ms behind at most, so a timeout may come that much
    /// early): read with no time-stamp counter and no `Duration`
    /// arithmetic, for the two touches of every request.
    fn coarse_ms(&self) -> u64 {
        monotonic_ms(ClockId::CLOCK_MONOTONIC_COARSE).saturating_sub(self.origin_ms)
    }

    /// Notes a byte moved; true if it was read and began a new head.
    fn touch(&self, read: bool) -> bool {
        let now = self.coarse_ms();
        self.last_io.store(now, Ordering::Relaxed);
        let started = read
            && self
                .phase
                .compare_exchange(WAITING, READING_HEAD, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if started {
            self.head_started.store(now, Ordering::Relaxed);
        } else if !read && self.h2.load(Ordering::Relaxed) {
            // HTTP/2 frames between requests (PING, SETTINGS) begin no
            // head, but their first byte started the header timer: an
            // answer written while no request is open stops it again, or
            // a client's keep-alive PING would cut it after `header`.
            let _ = self.phase.compare_exchange(
                READING_HEAD,
                WAITING,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        started
    }

    /// Notes bytes moved by a copy that does not go through [`TrackedIo`]
    /// (a tcp listener's splice or buffer copy): they hold off `idle`.
    pub fn moved(&self) {
        self.touch(false);
    }

    /// The client sent the HTTP/2 preface.
    pub(super) fn speaks_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    /// An answer leaves its request's body (or the rest of it) unread.
    pub(super) fn left_a_body(&self) {
        self.body_left.store(true, Ordering::Relaxed);
    }

    /// Whether an answer on this connection left a body unread.
    pub(super) fn body_left(&self) -> bool {
        self.body_left.load(Ordering::Relaxed)
    }

    /// An upgrade is answered: the connection's bytes are a tunnel's.
    pub(super) fn tunnelled(&self) {
        self.tunnel.store(true, Ordering::Relaxed);
    }

    /// No request line comes any more: the connection speaks HTTP/2 (also
    /// one geolb's own HTTP/1 server handed over after the preface, which
    /// hyper's reads see again from its buffer, not as a head's start) or
    /// carries a tunnel. A run of 64 KiB with no `\n` (an upload's DATA
    /// frames, a tunnel's bytes) is then no line too long.
    pub(super) fn carries_no_heads(&self) -> bool {
        self.h2.load(Ordering::Relaxed) || self.tunnel.load(Ordering::Relaxed)
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
            // Read only for HTTP/2 (see `watchdog`), which is known from
            // the preface on: HTTP/1 requests end without a clock read.
            if self.h2.load(Ordering::Relaxed) {
                self.quiet_since.store(self.now_ms(), Ordering::Relaxed);
            }
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
            // An HTTP/2 connection without open requests is idle however
            // many PINGs or SETTINGS it carries: from its last request on.
            let quiet =
                self.h2.load(Ordering::Relaxed) && self.open_requests.load(Ordering::Relaxed) == 0;
            let idle_deadline = if quiet {
                self.quiet_since.load(Ordering::Relaxed) + idle_ms
            } else {
                self.last_io.load(Ordering::Relaxed) + idle_ms
            };
            if now >= idle_deadline {
                return IDLE_TIMEOUT;
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

/// The most a request head may take (hyper's read buffer): past it, 431.
pub const MAX_HEAD: usize = 64 * 1024;

/// Written instead of hyper's 431 when the request line alone cannot fit
/// in [`MAX_HEAD`]; then the connection is closed.
pub(super) const URI_TOO_LONG: &[u8] = b"HTTP/1.1 414 URI Too Long\r\n\
content-type: text/plain; charset=utf-8\r\n\
cache-control: no-store\r\n\
content-length: 50\r\n\
connection: close\r\n\
\r\n\
414 URI Too Long: the request line exceeds 64 KiB\n";

/// An I/O object that reports its traffic to an [`Activity`].
pub struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    /// For HTTP/1 heads: the first line of the head being read.
    line: Line,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        TrackedIo {
            inner,
            activity,
            line: Line::Off,
        }
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// As [`TrackedIo::new`], for a client connection that carries HTTP
    /// requests: one whose request line alone fills [`MAX_HEAD`] gets 414
    /// rather than hyper's 431, which cannot tell it from large headers.
    pub fn for_requests(inner: T, activity: Arc<Activity>) -> Self {
        TrackedIo {
            inner,
            activity,
            line: Line::Ended,
        }
    }
}

/// How HTTP/2's preface starts, and no HTTP/1 request line.
const PREFACE_START: &[u8] = b"PRI ";

/// The first line of the head being read, seen as its bytes arrive. A head
/// starts with the first byte read while no request is open (the header
/// timer's start); bytes read while one is open (bodies, pipelined heads)
/// are not looked at, so a line may go unseen, never wrongly measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Not measured: a tunnel, or HTTP/2 (its preface was seen).
    Off,
    /// The line of the last head ended (or none began yet).
    Ended,
    /// This many bytes of a line, and no end yet.
    Open(usize),
    /// A head's first bytes, this many, all of them HTTP/2's `PRI ` so far
    /// (a client may send its preface in pieces).
    Preface(usize),
    /// Too long: this many bytes of [`URI_TOO_LONG`] written.
    Refusing(usize),
}

impl Line {
    /// Looks at bytes just read (`started`: they begin a head); true when
    /// the line can no longer end within [`MAX_HEAD`] (two bytes are left
    /// for the shortest end of a head, `\n\n`).
    fn too_long(&mut self, started: bool, data: &[u8]) -> bool {
        let (so_far, preface_seen) = match *self {
            Line::Off | Line::Refusing(_) => return false,
            _ if started => (0, Some(0)),
            Line::Preface(n) => (n, Some(n)),
            Line::Open(n) => (n, None),
            Line::Ended => return false,
        };
        if let Some(seen) = preface_seen {
            let rest = &PREFACE_START[seen..];
            let n = rest.len().min(data.len());
            if data[..n] == rest[..n] {
                *self = if n == rest.len() {
                    Line::Off
                } else {
                    Line::Preface(seen + n)
                };
                return false;
            }
        }
        if has_lf(data) {
            *self = Line::Ended;
            return false;
        }
        let len = so_far + data.len();
        *self = Line::Open(len);
        len + 2 > MAX_HEAD
    }
}

/// Whether `data` holds a `\n`, eight bytes at a time: a request line
/// usually ends within the first two or three words, where core's memchr
/// (aligning first) costs several times more.
fn has_lf(data: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const LF: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut words = data.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        // Some byte is zero after the XOR, i.e. was `\n`.
        let x = u64::from_ne_bytes(bytes) ^ LF;
        if x.wrapping_sub(ONES) & !x & HIGH != 0 {
            return true;
        }
    }
    words.remainder().contains(&b'\n')
}

impl<T: AsyncRead + AsyncWrite + Unpin> TrackedIo<T> {
    /// Writes [`URI_TOO_LONG`] from `written` on, then fails the read so
    /// hyper closes the connection without an answer of its own.
    #[cold]
    #[inline(never)]
    fn poll_refuse(&mut self, cx: &mut Context<'_>, written: usize) -> Poll<io::Result<()>> {
        let mut written = written;
        while written < URI_TOO_LONG.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &URI_TOO_LONG[written..]) {
                Poll::Ready(Ok(0)) => break,
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.line = Line::Refusing(written);
                    return Poll::Pending;
                }
            }
        }
        self.line = Line::Refusing(URI_TOO_LONG.len());
        // The rest of the line is still coming: the close lingers for it
        // (`linger::OnShutdown`) even when none of it is there yet.
        self.activity.left_a_body();
        std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request line too long",
        )))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Line::Refusing(written) = this.line {
            return this.poll_refuse(cx, written);
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let started = this.activity.touch(true);
            if this.line != Line::Off && this.activity.carries_no_heads() {
                this.line = Line::Off;
            }
            let was = this.line;
            if this.line.too_long(started, &buf.filled()[before..]) {
                tracing::debug!(line = ?this.line, "request line over {MAX_HEAD} bytes: 414");
                // hyper must not parse what it would answer with 431.
                buf.set_filled(before);
                return this.poll_refuse(cx, 0);
            }
            if was != Line::Off && this.line == Line::Off {
                this.activity.speaks_h2();
            }
        }
        result
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_measured_from_a_head_start_to_their_end() {
        let mut l = Line::Ended;
        assert!(!l.too_long(true, b"GET /short HTTP/1.1\r\nHost: x\r\n"));
        // Header bytes after the line ended, however many, are hyper's.
        assert!(!l.too_long(false, &vec![b'a'; MAX_HEAD]));
        // A new head: its line grows over several reads.
        assert!(!l.too_long(true, b"GET /"));
        assert!(!l.too_long(false, &vec![b'a'; MAX_HEAD - 8]));
        assert!(l.too_long(false, b"aaaa"));
        // Bytes read while a request is open begin nothing.
        let mut l = Line::Ended;
        assert!(!l.too_long(false, &vec![b'a'; 2 * MAX_HEAD]));
        // HTTP/2 and tunnels: never measured.
        let mut l = Line::Ended;
        assert!(!l.too_long(true, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!l.too_long(true, &vec![b'a'; 2 * MAX_HEAD]));
        let mut l = Line::Off;
        assert!(!l.too_long(true, &vec![b'a'; 2 * MAX_HEAD]));
        // The preface in pieces, down to a byte a read.
        for cut in [1, 2, 3] {
            let mut l = Line::Ended;
            assert!(!l.too_long(true, &b"PRI * HTTP/2.0\r\n"[..cut]));
            assert!(!l.too_long(false, &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[cut..]));
            assert_eq!(l, Line::Off, "cut after {cut}");
        }
        let mut l = Line::Ended;
        for b in b"PRI " {
            assert!(!l.too_long(l == Line::Ended, &[*b]));
        }
        assert_eq!(l, Line::Off);
        // A line that only starts like it is measured from its start.
        let mut l = Line::Ended;
        assert!(!l.too_long(true, b"PR"));
        assert!(!l.too_long(false, b"OPFIND"));
        assert_eq!(l, Line::Open(8));
        assert!(l.too_long(false, &vec![b'a'; MAX_HEAD]));
    }

    #[test]
    fn line_feeds_are_found_in_every_position() {
        for len in 0..40 {
            let mut data = vec![b'a'; len];
            assert!(!has_lf(&data), "{len}");
            for at in 0..len {
                data[at] = b'\n';
                assert!(has_lf(&data), "{len} {at}");
                data[at] = if at % 2 == 0 { 0x0b } else { 0x8a };
                assert!(!has_lf(&data), "{len} {at}: near misses");
                data[at] = b'a';
            }
        }
    }

    /// The watchdog's verdict and when, for a connection whose client
    /// sends a PING (a read, then geolb's answer) every 500 ms.
    async fn pinged(h2: bool) -> (&'static str, Duration) {
        let a = Activity::new();
        if h2 {
            a.speaks_h2();
        }
        let start = Instant::now();
        let pings = async {
            loop {
                a.touch(true);
                a.touch(false);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::select! {
            reason = a.watchdog(Some(Duration::from_secs(1)), Duration::from_secs(5)) => {
                (reason, start.elapsed())
            }
            () = pings => unreachable!(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn http2_pings_neither_start_the_header_timer_nor_count_as_use() {
        let (reason, after) = pinged(true).await;
        assert_eq!(reason, IDLE_TIMEOUT);
        assert!(after >= Duration::from_secs(5) && after < Duration::from_millis(5100));
        // Over HTTP/1 the same bytes would be a head that never ends.
        let (reason, after) = pinged(false).await;
        assert_eq!(reason, "header timeout");
        assert!(after < Duration::from_millis(1100));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_idle_from_its_last_request() {
        let a = Activity::new();
        a.speaks_h2();
        tokio::time::sleep(Duration::from_secs(3)).await;
        a.request_started();
        a.request_ended();
        let start = Instant::now();
        let reason = a.watchdog(None, Duration::from_secs(5)).await;
        assert_eq!(
            (reason, start.elapsed()),
            (IDLE_TIMEOUT, Duration::from_secs(5))
        );
    }

    #[test]
    fn the_414_answer_has_its_length() {
        let text = std::str::from_utf8(URI_TOO_LONG).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains(&format!("{} KiB", MAX_HEAD / 1024)));
    }
}
