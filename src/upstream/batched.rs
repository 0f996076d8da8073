//! An HTTP/2 backend connection's writes, held until its task has done
//! all it can in one poll, then written together.
//!
//! h2 writes a DATA frame of 256 bytes or more by itself: it chains the
//! payload to its buffer rather than copying it, and flushes before it
//! takes the next frame. Every request body sent to an h2c backend was so
//! a system call of its own (strace: a `writev` of 1,033 bytes for each
//! 1 KiB `POST`, 2.0 `writev` a request against HAProxy's 1.5 `sendto`),
//! on a connection many requests share. Here a write is copied into one
//! buffer, and a flush is put off once: the connection's task is woken
//! and goes to the back of the runtime's queue, and the flush of its next
//! poll writes what every stream queued in between, in one call.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Held at most: a write that would take the buffer past it goes out
/// first (and a large one goes straight, uncopied).
const HELD_MAX: usize = 64 * 1024;

/// Counts the polls of the task that drives the connection: a flush put
/// off in one poll is done in the next.
#[derive(Clone, Default)]
pub struct Polls(Arc<AtomicU32>);

impl Polls {
    /// Called by the driving task as each of its polls begins. Only that
    /// task writes it: a load and a store, no read-modify-write.
    pub fn begin(&self) {
        let n = self.0.load(Ordering::Relaxed);
        self.0.store(n.wrapping_add(1), Ordering::Relaxed);
    }

    fn now(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `io` with its writes held as the module says.
pub struct Batched<S> {
    io: S,
    held: BytesMut,
    /// The poll in which a flush was put off, while one is owed.
    owed: Option<u32>,
    polls: Polls,
}

impl<S> Batched<S> {
    pub fn new(io: S, polls: Polls) -> Batched<S> {
        Batched {
            io,
            held: BytesMut::new(),
            owed: None,
            polls,
        }
    }
}

impl<S: AsyncWrite + Unpin> Batched<S> {
    /// Writes everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.advance(n);
        }
        self.owed = None;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Batched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Batched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if this.held.len() + len > HELD_MAX {
            ready!(this.poll_drain(cx))?;
            if len > HELD_MAX {
                return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            this.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.held.is_empty() {
            let now = this.polls.now();
            match this.owed {
                None => {
                    this.owed = Some(now);
                    cx.waker().wake_by_ref();
                    return Poll::Ready(Ok(()));
                }
                Some(at) if at == now => return Poll::Ready(Ok(())),
                Some(_) => ready!(this.poll_drain(cx))?,
            }
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncReadExt;

    /// Writes count as calls on the far side of a duplex pipe.
    async fn write_and_flush(io: &mut Batched<tokio::io::DuplexStream>, bytes: &[u8]) {
        poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, bytes))
            .await
            .unwrap();
        poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn flushes_of_one_poll_write_in_the_next() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let polls = Polls::default();
        let mut io = Batched::new(near, polls.clone());
        polls.begin();
        write_and_flush(&mut io, b"one ").await;
        write_and_flush(&mut io, b"two ").await;
        // Put off: nothing has gone yet.
        let mut got = [0u8; 16];
        assert!(
            poll_fn(|cx| {
                let mut buf = ReadBuf::new(&mut got);
                Poll::Ready(Pin::new(&mut far).poll_read(cx, &mut buf).is_pending())
            })
            .await
        );
        polls.begin();
        poll_fn(|cx| Pin::new(&mut io).poll_flush(cx))
            .await
            .unwrap();
        let n = far.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"one two ");
    }

    #[tokio::test]
    async fn a_shutdown_writes_what_is_held() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let polls = Polls::default();
        let mut io = Batched::new(near, polls.clone());
        write_and_flush(&mut io, b"last words").await;
        poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx))
            .await
            .unwrap();
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }

    #[tokio::test]
    async fn writes_past_the_limit_go_in_order() {
        let (near, mut far) = tokio::io::duplex(1 << 22);
        let polls = Polls::default();
        let mut io = Batched::new(near, polls.clone());
        let small = vec![1u8; 1000];
        let big = vec![2u8; HELD_MAX + 10];
        let mut sent = Vec::new();
        for part in [&small[..], &big[..], &small[..]] {
            let mut at = 0;
            while at < part.len() {
                at += poll_fn(|cx| Pin::new(&mut io).poll_write(cx, &part[at..]))
                    .await
                    .unwrap();
            }
            sent.extend_from_slice(part);
        }
        poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx))
            .await
            .unwrap();
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes reordered");
    }
}
