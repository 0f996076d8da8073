//! A connection's writes, held while the task that drives it polls it and
//! written when the poll returns: one write for what all its streams had
//! ready in that poll. For HTTP/2, both to clients (hyper's server) and to
//! backends (`upstream::h2_client`).
//!
//! h2 writes a DATA frame of 256 bytes or more by itself: it chains the
//! payload to its buffer rather than copying it, and flushes before it
//! takes the next frame. A client with ten streams open got ten writes
//! (and ten TLS records) for ten 1 KiB answers that were ready together:
//! 2.0 `writev` a request with the backend's, where HAProxy made 1.13
//! system calls to write in all (`PERF_SYSCALLS=1 CLIENT=h2 H2_STREAMS=10
//! WORKLOADS=1k benches/http.sh`); to an h2c backend, every request body
//! was a write of its own on a connection many requests share (2.0 a
//! request for 1 KiB `POST`s, HAProxy 1.5). Only the driving task writes
//! the socket (the streams' tasks queue frames), so the end of its poll
//! is when nothing more comes to write.
//!
//! Only while a connection shows more than one answer ready in a poll
//! (two flushes of written bytes): from the second flush of a poll to the
//! end of the next poll that flushes once or not at all. Otherwise its
//! writes go straight through, uncopied: a client with one stream open
//! at a time (h2load's `-m1`) would pay for the copy and gain nothing.
//!
//! For HTTP/2 only: an HTTP/1 connection hyper upgrades hands its socket
//! to a tunnel, which no poll of the connection drains. Those held go to
//! hyper's HTTP/2 server alone, which upgrades none; and nothing is held
//! once the connection's future is done.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn_lock::ConnLock;

/// Held at most: a write that would take the buffer past it goes out
/// first (and a large one goes straight, uncopied).
const HELD_MAX: usize = 64 * 1024;

/// Both the HTTP/2 side's (the socket it reads and writes) and the
/// driving task's (which writes what is held): the same socket.
pub(crate) struct HeldWrites<S>(Arc<ConnLock<Held<S>>>);

struct Held<S> {
    io: S,
    held: BytesMut,
    /// A write of what was held failed: the HTTP/2 side's next call gets it.
    failed: Option<io::Error>,
    /// Writes are held (see the module's doc).
    holding: bool,
    /// Bytes were written since the last flush.
    written: bool,
    /// Flushes of written bytes in this poll of the connection.
    flushes: u8,
    /// The connection's future is done: no drain follows any more (an
    /// upgraded HTTP/1 connection's tunnel writes on), so nothing is held.
    released: bool,
}

impl<S> HeldWrites<S> {
    pub(crate) fn new(io: S) -> HeldWrites<S> {
        HeldWrites(Arc::new(ConnLock::new(Held {
            io,
            held: BytesMut::new(),
            failed: None,
            holding: false,
            written: false,
            flushes: 0,
            released: false,
        })))
    }

    /// The connection's future is done: writes go straight from now on,
    /// behind what is still held.
    fn release(&self) {
        let mut held = self.0.lock();
        held.released = true;
        held.holding = false;
    }

    /// The same socket, for the driving task to drain.
    pub(crate) fn drainer(&self) -> HeldWrites<S> {
        HeldWrites(self.0.clone())
    }
}

impl<S: AsyncWrite + Unpin> HeldWrites<S> {
    /// Writes what is held, after a poll of the connection. A failure is
    /// kept for the HTTP/2 side's next call, which then ends the connection.
    pub(crate) fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut held = self.0.lock();
        held.holding = !held.released && held.flushes > 1;
        held.flushes = 0;
        if held.held.is_empty() {
            return Poll::Ready(());
        }
        if let Err(e) = ready!(held.poll_drain(cx)) {
            held.failed = Some(e);
        }
        Poll::Ready(())
    }
}

/// `conn`, each of its polls followed by a write of what it wrote while
/// polled (`held`).
pub(crate) fn drained<F: Future, S: AsyncWrite + Unpin>(
    mut conn: Pin<&mut F>,
    held: Option<&HeldWrites<S>>,
) -> impl Future<Output = F::Output> {
    std::future::poll_fn(move |cx| {
        let polled = conn.as_mut().poll(cx);
        if let Some(held) = held {
            if polled.is_ready() {
                held.release();
            }
            let _ = held.poll_drain(cx);
        }
        polled
    })
}

impl<S: AsyncWrite + Unpin> Held<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.advance(n);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn failed(&mut self) -> io::Result<()> {
        self.failed.take().map_or(Ok(()), Err)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeldWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.lock().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeldWrites<S> {
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
        let mut held = self.0.lock();
        held.failed()?;
        held.written = true;
        if !held.holding {
            // Behind what is still held (a drain that found the socket
            // full), never ahead of it.
            ready!(held.poll_drain(cx))?;
            return Pin::new(&mut held.io).poll_write_vectored(cx, bufs);
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if held.held.len() + len > HELD_MAX {
            ready!(held.poll_drain(cx))?;
            if len > HELD_MAX {
                return Pin::new(&mut held.io).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            held.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Ready at once while something is held: it goes when the
    /// connection's poll returns ([`HeldWrites::poll_drain`]).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = self.0.lock();
        held.failed()?;
        if std::mem::take(&mut held.written) && !held.released {
            held.flushes = held.flushes.saturating_add(1);
            held.holding |= held.flushes > 1;
        }
        if held.holding {
            if !held.held.is_empty() {
                return Poll::Ready(Ok(()));
            }
            return Pin::new(&mut held.io).poll_flush(cx);
        }
        held.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = self.0.lock();
        held.failed()?;
        ready!(held.poll_drain(cx))?;
        Pin::new(&mut held.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Holding from the start, as after a poll with two answers; the
    /// polls here are never drained as ended, so it goes on holding.
    fn holding(io: tokio::io::DuplexStream) -> HeldWrites<tokio::io::DuplexStream> {
        let io = HeldWrites::new(io);
        io.0.lock().holding = true;
        io
    }

    async fn write_and_flush(io: &mut HeldWrites<tokio::io::DuplexStream>, bytes: &[u8]) {
        poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, bytes))
            .await
            .unwrap();
        poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx))
            .await
            .unwrap();
    }

    /// The next `n` bytes at the far end; a test whose bytes stay held
    /// fails here rather than hanging.
    async fn arrived(far: &mut tokio::io::DuplexStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        tokio::time::timeout(std::time::Duration::from_secs(5), far.read_exact(&mut got))
            .await
            .expect("the bytes arrive")
            .unwrap();
        got
    }

    fn nothing_arrived(far: &mut tokio::io::DuplexStream) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut got = [0u8; 16];
        let mut buf = ReadBuf::new(&mut got);
        Pin::new(far).poll_read(&mut cx, &mut buf).is_pending()
    }

    #[tokio::test]
    async fn flushed_writes_wait_for_the_drain_and_go_together() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = holding(near);
        let drainer = io.drainer();
        write_and_flush(&mut io, b"one ").await;
        write_and_flush(&mut io, b"two ").await;
        assert!(nothing_arrived(&mut far));
        poll_fn(|cx| drainer.poll_drain(cx)).await;
        let mut got = [0u8; 16];
        let n = far.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"one two ");
    }

    #[tokio::test]
    async fn writes_go_straight_until_a_poll_flushes_twice() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = HeldWrites::new(near);
        let drainer = io.drainer();
        write_and_flush(&mut io, b"alone").await;
        let mut got = [0u8; 16];
        let n = far.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"alone");
        // The end of that poll; the next flushes twice, so it holds.
        poll_fn(|cx| drainer.poll_drain(cx)).await;
        write_and_flush(&mut io, b"one ").await;
        write_and_flush(&mut io, b"two ").await;
        write_and_flush(&mut io, b"three").await;
        let n = far.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"one two ");
        assert!(nothing_arrived(&mut far));
        poll_fn(|cx| drainer.poll_drain(cx)).await;
        let n = far.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"three");
        // That poll flushed three times: the next holds too, flushing once;
        // the one after goes straight again.
        write_and_flush(&mut io, b"four").await;
        assert!(nothing_arrived(&mut far));
        poll_fn(|cx| drainer.poll_drain(cx)).await;
        let n = far.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"four");
        write_and_flush(&mut io, b"five").await;
        let n = far.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"five");
    }

    /// A drain that finds the socket full leaves bytes held; writes that
    /// come once holding is off go behind them, not ahead.
    #[tokio::test]
    async fn writes_after_a_drain_that_waited_keep_their_place() {
        let (near, mut far) = tokio::io::duplex(4);
        let mut io = holding(near);
        let drainer = io.drainer();
        write_and_flush(&mut io, b"first").await;
        // The pipe takes four bytes: the drain waits with one held, and
        // holding goes off (that poll flushed once).
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(drainer.poll_drain(&mut cx).is_pending());
        let writing = tokio::spawn(async move {
            io.write_all(b"second").await.unwrap();
            io.flush().await.unwrap();
            io
        });
        assert_eq!(arrived(&mut far, 11).await, b"firstsecond");
        writing.await.unwrap();
    }

    /// Once the connection's future is done (`drained` saw it ready),
    /// nothing is held: no drain would follow.
    #[tokio::test]
    async fn nothing_is_held_once_the_connection_is_done() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = holding(near);
        let drainer = io.drainer();
        drained(std::pin::pin!(async {}), Some(&drainer)).await;
        for word in [&b"one "[..], b"two ", b"three"] {
            write_and_flush(&mut io, word).await;
        }
        assert_eq!(arrived(&mut far, 13).await, b"one two three");
    }

    #[tokio::test]
    async fn a_shutdown_writes_what_is_held() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = holding(near);
        write_and_flush(&mut io, b"last words").await;
        poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx))
            .await
            .unwrap();
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }

    #[tokio::test]
    async fn a_failed_drain_is_the_next_write_s_error() {
        let (near, far) = tokio::io::duplex(1 << 20);
        drop(far);
        let mut io = holding(near);
        let drainer = io.drainer();
        write_and_flush(&mut io, b"into nothing").await;
        poll_fn(|cx| drainer.poll_drain(cx)).await;
        let again = poll_fn(|cx| Pin::new(&mut io).poll_write(cx, b"more")).await;
        assert!(again.is_err());
    }

    #[tokio::test]
    async fn writes_past_the_limit_go_in_order() {
        let (near, mut far) = tokio::io::duplex(1 << 22);
        let mut io = holding(near);
        let small = vec![1u8; 1000];
        let big = vec![2u8; HELD_MAX + 10];
        let mut sent = Vec::new();
        for part in [&small[..], &big[..], &small[..]] {
            io.write_all(part).await.unwrap();
            sent.extend_from_slice(part);
        }
        poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx))
            .await
            .unwrap();
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert!(got == sent, "bytes lost or reordered");
    }
}
