//! Reads that hold memory only for the bytes that came. Each read lands
//! in the thread's scratch buffer and what came is copied into the
//! connection's buffer, which is therefore only as large as the heads it
//! has read (bytes reclaims it in place once the last head is let go). As
//! HAProxy (a pooled buffer only while data is in flight) and nginx (a
//! 1 KiB header buffer) do, 1,000 connections then cost what their
//! messages weigh, not 1,000 buffers of the largest read a socket could
//! give. The price is a copy of the head's bytes, a few hundred per
//! request; bodies are read straight into buffers of their own, which
//! their readers let go once empty.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

/// The most one read takes: a request or response head of usual size in
/// one read, and no more than a socket's usual receive queue at once.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Reads once from `io`, at most `limit` bytes, and appends what came to
/// `buf`, growing it only as far as they need. `Ok(0)`: the end of the
/// stream (or `limit` 0).
pub fn poll_read_exact_size<R: AsyncRead + ?Sized>(
    io: Pin<&mut R>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    limit: usize,
) -> Poll<io::Result<usize>> {
    SCRATCH_BUF.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let room = limit.min(scratch.len());
        let mut read = ReadBuf::new(&mut scratch[..room]);
        ready!(io.poll_read(cx, &mut read))?;
        let got = read.filled();
        buf.extend_from_slice(got);
        Poll::Ready(Ok(got.len()))
    })
}

/// Reads once from `io` into the thread's scratch buffer and lets what
/// came go: the bytes of a client no longer answered. `Ok(0)`: its end.
pub fn poll_discard<R: AsyncRead + ?Sized>(
    io: Pin<&mut R>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    SCRATCH_BUF.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut read = ReadBuf::new(&mut scratch[..]);
        ready!(io.poll_read(cx, &mut read))?;
        Poll::Ready(Ok(read.filled().len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_came_is_kept_in_a_buffer_of_its_size() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let n = std::future::poll_fn(|cx| {
            poll_read_exact_size(Pin::new(&mut b), cx, &mut buf, 1 << 20)
        })
        .await
        .unwrap();
        assert_eq!((n, &buf[..]), (16, &b"GET / HTTP/1.1\r\n"[..]));
        assert_eq!(buf.capacity(), 16, "no more room than the bytes took");
        // Once what was read is let go, its memory takes the next read.
        let head = buf.split().freeze();
        let at = head.as_ptr();
        drop(head);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET /x HTTP/1.1\r\n")
            .await
            .unwrap();
        let n = std::future::poll_fn(|cx| poll_read_exact_size(Pin::new(&mut b), cx, &mut buf, 8))
            .await
            .unwrap();
        assert_eq!((n, &buf[..], buf.as_ptr()), (8, &b"GET /x H"[..], at));
        // A limit is kept, and more is appended to what is there.
        let n = std::future::poll_fn(|cx| poll_read_exact_size(Pin::new(&mut b), cx, &mut buf, 4))
            .await
            .unwrap();
        assert_eq!((n, &buf[..]), (4, &b"GET /x HTTP/"[..]));
        drop(a);
        let rest = std::future::poll_fn(|cx| {
            poll_read_exact_size(Pin::new(&mut b), cx, &mut buf, 1 << 20)
        })
        .await
        .unwrap();
        assert_eq!(rest, 5);
        let end = std::future::poll_fn(|cx| {
            poll_read_exact_size(Pin::new(&mut b), cx, &mut buf, 1 << 20)
        })
        .await
        .unwrap();
        assert_eq!(end, 0, "the end of the stream");
    }
}
