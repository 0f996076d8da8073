//! An HTTP connection's TCP socket (a client's or a backend's, under TLS
//! or not): its reads and writes as the system calls themselves.
//!
//! tokio's `TcpStream` reads with std's `read`, which calls glibc's
//! `recv`, and writes with `writev` the same way: each wrapper is a
//! cancellation point of POSIX threads, which it enters and leaves around
//! the call (about 55 instructions a call, four calls a proxied HTTP/1
//! request). rustix makes the call directly. The waiting is tokio's
//! readiness, as for tokio's own reads and writes, but the call is tried
//! first on the readiness tokio already knows of: `poll_read_ready` and
//! `poll_write_ready` (tokio's wait, which also registers the waker) run
//! only when there is none, so a read or write that goes through pays
//! tokio's task budget alone.

use std::io::{self, ErrorKind, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustix::net::{RecvFlags, SendFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::coop;

/// An HTTP connection's TCP socket, read and written with rustix.
pub struct TcpIo {
    stream: TcpStream,
    /// The last read took less than there was room for, which clears
    /// tokio's readiness: the next read waits for readiness first rather
    /// than trying on readiness it knows is not there.
    drained: bool,
}

impl TcpIo {
    pub fn new(stream: TcpStream) -> TcpIo {
        TcpIo {
            stream,
            drained: false,
        }
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads what the socket has into `buf`'s unfilled part, as tokio's
    /// `TcpStream::poll_read` does.
    #[inline]
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let s = &self.stream;
        // tokio's wait for readiness spends the task's budget itself.
        let budget = if self.drained {
            self.drained = false;
            ready!(s.poll_read_ready(cx))?;
            None
        } else {
            Some(ready!(coop::poll_proceed(cx)))
        };
        loop {
            let mut got = 0;
            let received = {
                // SAFETY: recv only writes into it, and only the bytes it
                // wrote are marked initialised below.
                #[allow(unsafe_code)]
                let unfilled = unsafe { buf.unfilled_mut() };
                let room = unfilled.len();
                s.try_io(Interest::READABLE, || {
                    let (_, n) = rustix::net::recv(s, &mut *unfilled, RecvFlags::empty())?;
                    got = n;
                    // Less than there was room for: the socket is drained.
                    // Said as tokio says it (its reads clear the readiness
                    // then), so the next read waits for epoll rather than
                    // asking the kernel for an `EAGAIN`.
                    if n > 0 && n < room {
                        Err(ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                })
            };
            match received {
                Err(_) if got > 0 => self.drained = true,
                // A read that filled the room, or the end (0 bytes).
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    ready!(s.poll_read_ready(cx))?;
                    continue;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Some(budget) = budget {
                budget.made_progress();
            }
            // SAFETY: the kernel wrote `got` bytes from the unfilled
            // part's start.
            #[allow(unsafe_code)]
            unsafe {
                buf.assume_init(got)
            };
            buf.advance(got);
            return Poll::Ready(Ok(()));
        }
    }

    /// Writes `bufs` with one `writev`, as tokio's
    /// `TcpStream::poll_write_vectored` does.
    #[inline]
    pub fn poll_writev(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let s = &self.stream;
        self.poll_write_with(cx, || Ok(rustix::io::writev(s, bufs)?))
    }

    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut() -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let budget = ready!(coop::poll_proceed(cx));
        loop {
            match self.stream.try_io(Interest::WRITABLE, &mut write) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    ready!(self.stream.poll_write_ready(cx))?
                }
                written => {
                    budget.made_progress();
                    return Poll::Ready(written);
                }
            }
        }
    }
}

impl AsyncRead for TcpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_recv(cx, buf)
    }
}

impl AsyncWrite for TcpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let s = &self.stream;
        // As std's `write`: no SIGPIPE for a peer gone.
        self.poll_write_with(cx, || Ok(rustix::net::send(s, buf, SendFlags::NOSIGNAL)?))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_writev(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::{Read, Write};
    use std::rc::Rc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::TcpIo;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A `TcpIo` and its peer, a blocking std socket.
    async fn pair() -> (TcpIo, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (accepted, connected) = tokio::join!(listener.accept(), TcpStream::connect(addr));
        let peer = accepted.expect("accept").0.into_std().expect("std");
        peer.set_nonblocking(false).expect("blocking");
        (TcpIo::new(connected.expect("connect")), peer)
    }

    async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .unwrap_or_else(|_| panic!("{what}: no result in 10 s"))
    }

    #[test]
    fn reads_what_comes_a_short_read_then_a_wait_then_more_then_the_end() {
        runtime().block_on(async {
            let (mut io, mut peer) = pair().await;
            peer.write_all(b"GET / HTTP/1.1\r\n").expect("write");
            let mut buf = [0u8; 64];
            let n = within("first read", io.read(&mut buf)).await.expect("read");
            assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
            // Drained: the next read waits for more, and is woken by it.
            let more = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                peer.write_all(b"Host: a\r\n").expect("write");
                peer
            });
            let n = within("read after the wait", io.read(&mut buf))
                .await
                .expect("read");
            assert_eq!(&buf[..n], b"Host: a\r\n");
            drop(more.join().expect("writer"));
            let n = within("read of the end", io.read(&mut buf))
                .await
                .expect("read");
            assert_eq!(n, 0, "the peer closed");
        });
    }

    #[test]
    fn a_read_that_fills_the_buffer_leaves_the_rest_for_the_next() {
        runtime().block_on(async {
            let (mut io, mut peer) = pair().await;
            peer.write_all(b"0123456789").expect("write");
            let mut got = Vec::new();
            let mut buf = [0u8; 4];
            while got.len() < 10 {
                let n = within("read", io.read(&mut buf)).await.expect("read");
                assert!(n > 0, "ended early: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, b"0123456789");
        });
    }

    #[test]
    fn writes_reach_the_peer_whole_and_a_gone_peer_is_an_error() {
        runtime().block_on(async {
            let (mut io, mut peer) = pair().await;
            // More than the socket buffers hold: the writer must wait for
            // the peer's reads and be woken by them.
            let data: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
            let expected = data.clone();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                peer.read_to_end(&mut got).expect("read");
                got
            });
            within("vectored writes", async {
                let (head, body) = data.split_at(100);
                let mut slices = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
                let mut bufs = &mut slices[..];
                while !bufs.is_empty() {
                    let n = io.write_vectored(bufs).await.expect("write");
                    std::io::IoSlice::advance_slices(&mut bufs, n);
                }
            })
            .await;
            io.shutdown().await.expect("shutdown");
            assert!(
                reader.join().expect("reader") == expected,
                "the bytes differ"
            );

            let (mut io, peer) = pair().await;
            drop(peer);
            let failed = within("writes to a closed peer", async {
                loop {
                    if let Err(e) = io.write_all(&[0u8; 65536]).await {
                        return e;
                    }
                }
            })
            .await;
            assert!(
                matches!(
                    failed.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ),
                "{failed}"
            );
        });
    }

    /// tokio's task budget: a connection whose reads or writes always go
    /// through must still let the thread's other tasks run.
    #[test]
    fn a_socket_always_ready_still_gives_the_thread_to_other_tasks() {
        runtime().block_on(async {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async {
                    let (mut io, mut peer) = pair().await;
                    let chunk = vec![7u8; 1 << 16];
                    let feeder =
                        std::thread::spawn(move || while peer.write_all(&chunk).is_ok() {});
                    let other_ran = Rc::new(Cell::new(false));
                    let flag = other_ran.clone();
                    tokio::task::spawn_local(async move { flag.set(true) });
                    let mut buf = [0u8; 512];
                    let mut reads = 0;
                    while !other_ran.get() {
                        io.read_exact(&mut buf).await.expect("read");
                        reads += 1;
                        assert!(reads < 100_000, "reads never yielded to the other task");
                    }
                    drop(io);
                    feeder.join().expect("feeder");

                    let (mut io, mut peer) = pair().await;
                    let drain = std::thread::spawn(move || {
                        let mut sink = [0u8; 1 << 16];
                        while matches!(peer.read(&mut sink), Ok(n) if n > 0) {}
                    });
                    let other_ran = Rc::new(Cell::new(false));
                    let flag = other_ran.clone();
                    tokio::task::spawn_local(async move { flag.set(true) });
                    let mut writes = 0;
                    while !other_ran.get() {
                        io.write_all(b"x").await.expect("write");
                        writes += 1;
                        assert!(writes < 100_000, "writes never yielded to the other task");
                    }
                    drop(io);
                    drain.join().expect("drain");
                })
                .await;
        });
    }
}
