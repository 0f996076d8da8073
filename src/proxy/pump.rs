//! A tcp connection's bytes, copied both ways: through a pipe with
//! splice(2), so they never enter user space, or through a buffer. Either
//! is held only while data passes: when its source has nothing more to
//! read, the pipe goes back to the pool ([`super::pipes`]) and the buffer
//! is freed, so an idle connection holds neither.
//!
//! Each direction waits for its source with tokio's readiness
//! (`readable`, `writable`, `try_io`), never spinning on EAGAIN. A source's
//! end of stream is forwarded as shutdown(Write) on the other socket once
//! everything read has been written (half-close); an error in either
//! direction ends both, as `tokio::io::copy_bidirectional` does.

use std::future::poll_fn;
use std::io::{self, ErrorKind};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU8, Ordering};

use ::metrics::Counter;
use nix::fcntl::splice;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::activity::Activity;
use super::pipes::{Pipe, SPLICE_FLAGS as FLAGS, poll_splice_into, unsupported};

/// Bytes buffered per direction while the buffer copy moves data. 16 KiB,
/// as HAProxy's and nginx's buffers: 8 KiB moved 0.71x HAProxy's iperf3
/// throughput (benches/tcp.sh).
const COPY_BUFFER: usize = 16 * 1024;

/// Asked of one splice into a pipe: the kernel moves at most what the pipe
/// holds (64 KiB by default), so asking more costs nothing.
const SPLICE_MAX: usize = 1 << 20;

/// One direction: bytes read from `from`, written to `to`.
pub struct Leg<'a> {
    pub from: &'a TcpStream,
    pub to: &'a TcpStream,
    /// Counts bytes as they are read, so long connections show their
    /// traffic before they end.
    pub counter: Counter,
    /// Read so far, for the access line.
    pub total: u64,
    /// Noted in [`How::first_eof`] if this direction ends first.
    pub side: u8,
}

/// What both directions share.
pub struct How<'a> {
    /// Splice through pipes when one can be had (else a buffer copy).
    pub splice: bool,
    pub activity: &'a Activity,
    /// The [`Leg::side`] whose source ended first; 0 while none has.
    pub first_eof: &'a AtomicU8,
}

/// Copies both ways until both sources have ended, or one direction fails.
pub async fn both(up: &mut Leg<'_>, down: &mut Leg<'_>, how: &How<'_>) -> io::Result<()> {
    tokio::try_join!(up.run(how), down.run(how))?;
    Ok(())
}

/// Why a busy spell of a direction stopped.
enum Pause {
    /// The source has nothing to read now.
    Idle,
    /// The source ended; all it sent has been written.
    End,
    /// The kernel cannot splice from this source; nothing was moved.
    NoSplice,
}

impl Leg<'_> {
    async fn run(&mut self, how: &How<'_>) -> io::Result<()> {
        let mut splice = how.splice;
        loop {
            self.from.readable().await?;
            let pause = match splice.then(Pipe::get).flatten() {
                Some(pipe) => self.splice(pipe, how.activity).await?,
                None => self.copy(how.activity).await?,
            };
            match pause {
                Pause::Idle => {}
                Pause::NoSplice => splice = false,
                Pause::End => {
                    let _ = how.first_eof.compare_exchange(
                        0,
                        self.side,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    return socket2::SockRef::from(self.to).shutdown(Shutdown::Write);
                }
            }
        }
    }

    /// Splices while the source has data: into `pipe`, then all of it out
    /// before the next read, so the pipe is empty whenever this returns
    /// other than by error (and on error it is closed, not reused).
    async fn splice(&mut self, mut pipe: Pipe, activity: &Activity) -> io::Result<Pause> {
        loop {
            let read = self.from.try_io(Interest::READABLE, || {
                Ok(splice(
                    self.from,
                    None,
                    &pipe.write,
                    None,
                    SPLICE_MAX,
                    FLAGS,
                )?)
            });
            let n = match read {
                Ok(0) => return Ok(pipe.released(Pause::End)),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Ok(pipe.released(Pause::Idle));
                }
                Err(e) if unsupported(&e) => return Ok(pipe.released(Pause::NoSplice)),
                Err(e) => return Err(e),
            };
            pipe.pending = n;
            self.moved(n, activity).await;
            while pipe.pending > 0 {
                let out = pipe.read.as_fd();
                match poll_fn(|cx| poll_splice_into(self.to, cx, out, pipe.pending)).await? {
                    0 => return Err(ErrorKind::WriteZero.into()),
                    n => {
                        pipe.pending -= n;
                        activity.moved();
                    }
                }
            }
        }
    }

    /// Copies through a buffer while the source has data; the buffer lives
    /// only as long as this busy spell.
    async fn copy(&mut self, activity: &Activity) -> io::Result<Pause> {
        let mut buf = Vec::with_capacity(COPY_BUFFER);
        loop {
            buf.clear();
            match self.from.try_read_buf(&mut buf) {
                Ok(0) => return Ok(Pause::End),
                Ok(n) => self.moved(n, activity).await,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Pause::Idle),
                Err(e) => return Err(e),
            }
            let mut sent = 0;
            while sent < buf.len() {
                self.to.writable().await?;
                match self.to.try_write(&buf[sent..]) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        sent += n;
                        activity.moved();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Counts `n` bytes read, then lets other tasks run if this one has
    /// used its turn: tokio's `readable`, `writable` and `try_io` spend no
    /// budget, so a source that never runs dry would otherwise hold the
    /// worker thread.
    async fn moved(&mut self, n: usize, activity: &Activity) {
        self.counter.increment(n as u64);
        self.total += n as u64;
        activity.moved();
        tokio::task::consume_budget().await;
    }
}

impl Pipe {
    /// `pause`, once the (empty) pipe is back in the pool.
    fn released(self, pause: Pause) -> Pause {
        self.release();
        pause
    }
}
