//! A client connection split into its read and write halves, as
//! `tokio::io::split` splits it (one lock, taken for each poll), with the
//! socket under them within reach: the HTTP/1 server splices response
//! bodies into it, and tokio's halves give no way to the stream they share.

use std::io::{self, ErrorKind, IoSlice};
use std::os::fd::BorrowedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::activity::TrackedIo;
use super::pipes::poll_splice_into;
use crate::conn_lock::ConnLock;
use crate::tcp_io::TcpIo;

/// A client connection that may be a plain TCP socket, which a pipe can
/// be spliced into.
pub(super) trait Socket {
    fn tcp(&self) -> Option<&TcpStream>;

    /// Whether TLS agreed on HTTP/2 (ALPN `h2`).
    fn agreed_on_h2(&self) -> bool {
        false
    }
}

impl Socket for TcpIo {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.get_ref())
    }
}

/// Its bytes are encrypted by geolb: nothing can be spliced into it.
impl<S> Socket for tokio_rustls::server::TlsStream<S> {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }

    fn agreed_on_h2(&self) -> bool {
        self.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

pub(super) fn split<T: AsyncWrite>(io: T) -> (ReadHalf<T>, WriteHalf<T>) {
    let vectored = io.is_write_vectored();
    let shared = Arc::new(ConnLock::new(io));
    (
        ReadHalf(shared.clone()),
        WriteHalf {
            io: shared,
            vectored,
        },
    )
}

pub(super) struct ReadHalf<T>(Arc<ConnLock<T>>);

pub(super) struct WriteHalf<T> {
    io: Arc<ConnLock<T>>,
    /// Asked once: it cannot change, and asking would take the lock.
    vectored: bool,
}

impl<T> ReadHalf<T> {
    /// The connection whole again; `None` if `write` is not this one's
    /// other half.
    pub(super) fn unsplit(self, write: WriteHalf<T>) -> Option<T> {
        if !Arc::ptr_eq(&self.0, &write.io) {
            return None;
        }
        drop(write);
        let io = Arc::into_inner(self.0)?;
        Some(io.into_inner())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadHalf<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.lock()).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteHalf<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io.lock()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io.lock()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.vectored
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io.lock()).poll_shutdown(cx)
    }
}

impl<T: Socket> WriteHalf<TrackedIo<T>> {
    /// Whether pipes can be spliced into the connection.
    pub(super) fn is_tcp(&self) -> bool {
        self.io.lock().get_ref().tcp().is_some()
    }

    /// Splices up to `len` bytes from `pipe` into the connection once it
    /// can take them; `Ok(0)` only for `len` 0. A connection that is not a
    /// TCP socket is refused as the kernel refuses what it cannot splice.
    pub(super) fn poll_splice_from(
        &self,
        cx: &mut Context<'_>,
        pipe: BorrowedFd<'_>,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let io = self.io.lock();
        let Some(tcp) = io.get_ref().tcp() else {
            return Poll::Ready(Err(ErrorKind::Unsupported.into()));
        };
        let n = ready!(poll_splice_into(tcp, cx, pipe, len))?;
        if n > 0 {
            io.activity().moved();
        }
        Poll::Ready(Ok(n))
    }
}
