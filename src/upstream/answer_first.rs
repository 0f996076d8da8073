//! A backend connection for hyper's HTTP/1 client on which a write the
//! backend refused stops the writing, not the exchange.
//!
//! A backend may answer before it has read all of a request's body (a 413
//! to an upload too large, a 401) and close: its kernel then resets the
//! connection, and the next write of the body fails. hyper's client fails
//! the request on that write, and the client was answered 502, though the
//! backend's answer had come and was still there to read (after a reset,
//! what arrived before it is read first). [`AnswerFirst`] takes such a
//! write and the ones after it as written, dropping their bytes, so hyper
//! goes on reading: the answer reaches the client, and the rest of the
//! request body is read from the client and dropped (held pending
//! instead, hyper read no more once the answer was whole, and the
//! client's upload and its connection stalled). Without an answer, the
//! read finds the reset and the request fails as before, once its body
//! is sent. geolb's own HTTP/1 client stops writing the same way in
//! cleartext (`h1::Conn::drive_writer`).
//!
//! It wraps the TCP stream, under TLS when there is TLS, for either
//! client: rustls writes while it reads too (what it owes the peer), and
//! above it such a write's reset came out of the read that was to find
//! the answer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(super) struct AnswerFirst<S> {
    inner: S,
    /// A write failed so: what is written from then on is dropped, and
    /// reads decide how the connection ends.
    refused: bool,
}

impl<S> AnswerFirst<S> {
    pub(super) fn new(inner: S) -> Self {
        AnswerFirst {
            inner,
            refused: false,
        }
    }

    pub(super) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// `result` of a write of `len` bytes, unless the backend refused it:
    /// then taken as written.
    fn unless_refused<T>(&mut self, result: Poll<io::Result<T>>, len: T) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(Err(e)) if refused(&e) => {
                tracing::debug!(error = %e, "backend refused the rest of the request: reading its answer");
                self.refused = true;
                Poll::Ready(Ok(len))
            }
            other => other,
        }
    }
}

/// The errors of a write the peer reset or stopped reading.
fn refused(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for AnswerFirst<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnswerFirst<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.refused {
            return Poll::Ready(Ok(buf.len()));
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.unless_refused(result, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.refused {
            return Poll::Ready(Ok(len));
        }
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.unless_refused(result, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.refused {
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.unless_refused(result, ())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.refused {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_refused_write_is_dropped_and_the_answer_is_still_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 16];
            s.read_exact(&mut head).await.unwrap();
            s.write_all(b"answer").await.unwrap();
            // Closed with the rest of the upload unread: a reset.
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut conn = AnswerFirst::new(stream);
        conn.write_all(b"POST / HTTP/1.1\r").await.unwrap();
        backend.await.unwrap();
        let upload = vec![b'u'; 1 << 20];
        // Until the reset comes back, and a while after: every write
        // succeeds.
        for _ in 0..64 {
            conn.write_all(&upload).await.unwrap();
            conn.flush().await.unwrap();
        }
        assert!(conn.refused, "64 MiB written to a closed socket");
        let mut answer = Vec::new();
        let end = conn.read_to_end(&mut answer).await;
        assert_eq!(&answer, b"answer", "{end:?}");
        assert!(conn.shutdown().await.is_ok());
    }
}
