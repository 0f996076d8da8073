//! The lingering close of an HTTP/1 client connection, as nginx's
//! `lingering_close`: answered while its client may still be sending (the
//! rest of a body, of a refused head), a connection ends its side first,
//! then reads and drops what the client sends until it closes too, is
//! quiet for [`QUIET`], or [`MAX`] has passed (each at most the listener's
//! `idle` timeout), or geolb stops. Closed at once, its kernel would reset
//! the connection at the client's next bytes, and a client that writes its
//! whole request before it reads (Python's `http.client`, many SDKs) would
//! get a broken pipe instead of the answer.
//!
//! geolb's own HTTP/1 server knows when a body was left unread and
//! lingers then (`h1::close`); hyper's, which does not say, has its
//! connection wrapped in [`OnShutdown`], which lingers when hyper shuts
//! an HTTP/1 connection down after an answer that left a body unread
//! (geolb's `Completion` and rules note it on the connection's
//! `Activity`) or with the client's bytes there, and when hyper drops it
//! unshut right after writing (its answer to a client's error, as the
//! `414` to a request line too long, which `Activity` notes as a body
//! left) in the same cases.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use super::activity::Activity;
use crate::accept::Slot;
use crate::readbuf::poll_discard;

/// nginx's `lingering_timeout`: how long a closing connection waits for
/// the client's next bytes (and geolb's server for room for its close).
pub(super) const QUIET: Duration = Duration::from_secs(5);
/// nginx's `lingering_time`: how long it reads on in all.
const MAX: Duration = Duration::from_secs(30);
/// Reads in one poll before the task lets others run: a client sending as
/// fast as it can must not hold the thread.
const READS_A_POLL: usize = 16;

/// A connection's reading-on, from the moment its side was shut down.
pub(super) struct Linger {
    quiet: Duration,
    /// The last byte (or the start) plus `quiet`.
    quiet_until: Instant,
    end: Instant,
    /// At `quiet_until`, or at `end` if sooner.
    timer: Pin<Box<Sleep>>,
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Linger {
    /// `idle`: the listener's idle timeout, which bounds both waits;
    /// `shutdown`: geolb stopping ends it.
    pub(super) fn new(idle: Duration, shutdown: CancellationToken) -> Linger {
        let now = Instant::now();
        let quiet = QUIET.min(idle);
        let end = now + MAX.min(idle);
        Linger {
            quiet,
            quiet_until: now + quiet,
            end,
            timer: Box::pin(tokio::time::sleep_until((now + quiet).min(end))),
            stopping: Box::pin(shutdown.cancelled_owned()),
        }
    }

    /// Reads from `io` and drops it; ready once the lingering is over
    /// (its reason logged).
    pub(super) fn poll_drain<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        io: Pin<&mut R>,
    ) -> Poll<()> {
        let reason = ready!(self.poll_reason(cx, io));
        tracing::debug!(reason, "lingering close ended");
        Poll::Ready(())
    }

    fn poll_reason<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut io: Pin<&mut R>,
    ) -> Poll<&'static str> {
        if self.stopping.as_mut().poll(cx).is_ready() {
            return Poll::Ready("geolb stops");
        }
        for _ in 0..READS_A_POLL {
            match poll_discard(io.as_mut(), cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready("the client closed"),
                Poll::Ready(Err(_)) => return Poll::Ready("the connection failed"),
                Poll::Ready(Ok(_)) => {
                    self.quiet_until = Instant::now() + self.quiet;
                    self.timer.as_mut().reset(self.quiet_until.min(self.end));
                }
                Poll::Pending => {
                    ready!(self.timer.as_mut().poll(cx));
                    return Poll::Ready(match Instant::now() >= self.quiet_until {
                        true => "the client was quiet",
                        false => "lingered long enough",
                    });
                }
            }
        }
        if Instant::now() >= self.end {
            return Poll::Ready("lingered long enough");
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Shuts `write` down; true once it is. Bounded: over TLS the
/// close_notify waits for room in the socket, which a client that reads
/// nothing never makes; and not waited for by geolb's stop (the answer's
/// bytes are all in the socket by then).
pub(super) async fn shut_down<W: AsyncWrite + Unpin + ?Sized>(
    write: &mut W,
    idle: Duration,
    shutdown: &CancellationToken,
) -> bool {
    tokio::select! {
        biased;
        shut = tokio::time::timeout(QUIET.min(idle), write.shutdown()) => shut.is_ok(),
        () = shutdown.cancelled() => false,
    }
}

/// Whether a connection just shut down waits for its client: only one
/// that may still be sending, whose body an answer left unread or whose
/// bytes are there. One that sent all and waits for the close is let go
/// at once.
fn client_may_send<R: AsyncRead + ?Sized>(
    io: Pin<&mut R>,
    cx: &mut Context<'_>,
    activity: &Activity,
) -> bool {
    match poll_discard(io, cx) {
        Poll::Ready(Ok(n)) => n > 0,
        Poll::Ready(Err(_)) => false,
        Poll::Pending => activity.body_left(),
    }
}

/// hyper's HTTP/1 connection, lingering when hyper shuts it down while
/// the client may still be sending: an answer left its body unread
/// ([`Activity::body_left`]), or its bytes are there. Not HTTP/2 or a
/// tunnel (their `Activity` says so): HTTP/2 ends with GOAWAY, and a
/// tunnel's shutdown passes on a half-close while its bytes still flow.
pub(super) struct OnShutdown<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// Taken only by the drop, which may hand it to a lingering task.
    inner: Option<T>,
    activity: Arc<Activity>,
    idle: Duration,
    shutdown: CancellationToken,
    state: State,
    /// The connection's last bytes went out, not in: an answer was the
    /// last thing on it.
    wrote_last: bool,
    /// Its place under the listener's and its client's limits, held on
    /// by a lingering task of its own.
    slot: Arc<Slot>,
    /// The listener's tasks, which such a task joins: geolb's stop ends
    /// it (its `Linger` sees the stop) and waits for its close.
    tasks: TaskTracker,
}

enum State {
    Open,
    Lingering(Box<Linger>),
    Closed,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> OnShutdown<T> {
    pub(super) fn new(
        inner: T,
        activity: Arc<Activity>,
        idle: Duration,
        shutdown: CancellationToken,
        slot: Arc<Slot>,
        tasks: TaskTracker,
    ) -> Self {
        OnShutdown {
            inner: Some(inner),
            activity,
            idle,
            shutdown,
            state: State::Open,
            wrote_last: false,
            slot,
            tasks,
        }
    }

    fn io(&mut self) -> io::Result<Pin<&mut T>> {
        match &mut self.inner {
            Some(io) => Ok(Pin::new(io)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn wrote(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(1..))) {
            self.wrote_last = true;
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for OnShutdown<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = self.io()?.poll_read(cx, buf);
        if buf.filled().len() > before {
            self.wrote_last = false;
        }
        read
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for OnShutdown<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = self.io()?.poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = self.io()?.poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(T::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Closed => return Poll::Ready(Ok(())),
                State::Open => {
                    ready!(this.io()?.poll_shutdown(cx))?;
                    this.state = State::Closed;
                    if this.activity.carries_no_heads() {
                        continue;
                    }
                    let Some(inner) = &mut this.inner else {
                        continue;
                    };
                    if client_may_send(Pin::new(inner), cx, &this.activity) {
                        let linger = Linger::new(this.idle, this.shutdown.clone());
                        this.state = State::Lingering(Box::new(linger));
                    }
                }
                State::Lingering(linger) => {
                    let Some(inner) = &mut this.inner else {
                        return Poll::Ready(Ok(()));
                    };
                    ready!(linger.poll_drain(cx, Pin::new(inner)));
                    this.state = State::Closed;
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for OnShutdown<T> {
    /// hyper ends a connection at a client's error (a request line too
    /// long) by dropping it, unshut, after its answer (the `414`): closed
    /// at once, the client sending on would be reset and never read it.
    /// Such a connection is shut down in a task of its own, still holding
    /// its slot, and lingers there when the client may still be sending,
    /// as geolb's own server closes (`shut_down`, then a `Linger`). A
    /// connection geolb cuts (its `idle` timeout) after an answer is shut
    /// down so too, rather than dropped.
    fn drop(&mut self) {
        if !matches!(self.state, State::Open)
            || !self.wrote_last
            || self.activity.carries_no_heads()
            || self.shutdown.is_cancelled()
        {
            return;
        }
        // Outside a runtime (its own end) there is nothing to linger in.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        let (idle, shutdown) = (self.idle, self.shutdown.clone());
        let (activity, slot) = (self.activity.clone(), self.slot.clone());
        tracing::debug!("hyper's connection closes in a task of its own");
        self.tasks.spawn(async move {
            let _slot = slot;
            if !shut_down(&mut inner, idle, &shutdown).await {
                return;
            }
            let lingers = std::future::poll_fn(|cx| {
                Poll::Ready(client_may_send(Pin::new(&mut inner), cx, &activity))
            });
            if lingers.await {
                let mut linger = Linger::new(idle, shutdown);
                std::future::poll_fn(|cx| linger.poll_drain(cx, Pin::new(&mut inner))).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Drains `server` with a lingering close bounded by `idle`, the client
    /// writing 100 bytes at each of `sends` (from the start); the reason
    /// it ended and when.
    async fn linger_over(idle: Duration, sends: &[Duration]) -> (&'static str, Duration) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let start = Instant::now();
        let mut linger = Linger::new(idle, CancellationToken::new());
        let sends: Vec<Duration> = sends.to_vec();
        let writer = tokio::spawn(async move {
            for at in sends {
                tokio::time::sleep_until(start + at).await;
                client.write_all(&[b'u'; 100]).await.unwrap();
            }
            // Open, silent.
            std::future::pending::<()>().await;
        });
        let reason = std::future::poll_fn(|cx| linger.poll_reason(cx, Pin::new(&mut server))).await;
        writer.abort();
        (reason, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_client_ends_it_after_the_quiet_wait_from_its_last_byte() {
        // idle 10 s: quiet after 5 s, at most 10 s.
        let (reason, took) = linger_over(Duration::from_secs(10), &[Duration::from_secs(2)]).await;
        assert_eq!(reason, "the client was quiet");
        assert_eq!(took, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_sending_on_is_read_for_the_whole_wait() {
        let every_second: Vec<Duration> = (0..20).map(Duration::from_secs).collect();
        let (reason, took) = linger_over(Duration::from_secs(10), &every_second).await;
        assert_eq!(reason, "lingered long enough");
        assert_eq!(took, Duration::from_secs(10));
    }

    /// With an `idle` under 5 s both waits are `idle`: a byte read after
    /// the start puts the quiet end past the whole wait's, which ends it
    /// (the client was not quiet for all of it).
    #[tokio::test(start_paused = true)]
    async fn with_a_short_idle_both_waits_are_idle() {
        let (reason, took) = linger_over(Duration::from_secs(1), &[]).await;
        assert_eq!(
            (reason, took),
            ("the client was quiet", Duration::from_secs(1))
        );
        let late = Duration::from_millis(5);
        let (reason, took) = linger_over(Duration::from_secs(1), &[late]).await;
        assert_eq!(
            (reason, took),
            ("lingered long enough", Duration::from_secs(1))
        );
    }
}
