//! The pipes that tcp listeners, and HTTP/1 response bodies, splice(2)
//! through, shared by the process.
//!
//! A pipe is two descriptors, so one per busy direction of every
//! connection would double what a tcp connection costs in descriptors. A
//! connection takes a pipe only while data passes and gives it back once
//! its source has nothing more to read (as HAProxy's `maxpipes` pool): idle
//! connections hold none. Pipes given back empty wait here for the next
//! busy connection, up to [`KEPT`]; at most [`limit`] exist at once, and
//! past that a connection copies through a buffer instead.

use std::io::{self, ErrorKind};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, ready};

use nix::errno::Errno;
use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::sys::resource::{Resource, getrlimit};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Every splice: pages moved rather than copied where the kernel can, and
/// never a wait (tokio's readiness does the waiting).
pub const SPLICE_FLAGS: SpliceFFlags =
    SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

/// Splices up to `len` bytes from `pipe` (its read end) into `to` once
/// `to` can take them, waiting with tokio's readiness rather than spinning
/// on `EAGAIN`; `Ok(0)` only for `len` 0.
pub fn poll_splice_into(
    to: &TcpStream,
    cx: &mut Context<'_>,
    pipe: BorrowedFd<'_>,
    len: usize,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(to.poll_write_ready(cx))?;
        match to.try_io(Interest::WRITABLE, || {
            Ok(splice(pipe, None, to, None, len, SPLICE_FLAGS)?)
        }) {
            // Readiness is cleared: the next turn registers the waker.
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            spliced => return Poll::Ready(spliced),
        }
    }
}

/// A splice refused for the kind of descriptor, before moving anything.
pub fn unsupported(e: &io::Error) -> bool {
    e.kind() == ErrorKind::Unsupported
        || e.raw_os_error().is_some_and(|code| {
            [Errno::EINVAL, Errno::ENOSYS, Errno::EOPNOTSUPP].contains(&Errno::from_raw(code))
        })
}

/// Empty pipes kept for reuse: enough for a burst of busy connections
/// without a pipe2 call each, few enough that an idle daemon holds few
/// descriptors (128).
const KEPT: usize = 64;

/// Empty pipes waiting for a connection.
static IDLE: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
/// Pipes in existence, in use or idle.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Pipes allowed at once: an eighth of the open-file limit, so that pipes
/// (two descriptors each) take at most a quarter of the descriptors and
/// the rest stay for connections. 2,500 under a limit of 20,000.
fn limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
        usize::try_from(soft / 8).unwrap_or(usize::MAX)
    })
}

/// One pipe: what a splice from a socket fills and a splice to the other
/// socket empties.
pub struct Pipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
    /// Bytes in the pipe, not yet spliced out.
    pub pending: usize,
    _open: Open,
}

/// One of [`OPEN`], given back when its pipe is closed.
struct Open;

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pipe {
    /// An empty pipe: a kept one, or a new one; None when [`limit`] pipes
    /// exist already or pipe2 fails (out of descriptors).
    pub fn get() -> Option<Pipe> {
        if let Some(pipe) = crate::locked(&IDLE).pop() {
            return Some(pipe);
        }
        if OPEN.fetch_add(1, Ordering::Relaxed) >= limit() {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let open = Open;
        match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
            Ok((read, write)) => Some(Pipe {
                read,
                write,
                pending: 0,
                _open: open,
            }),
            Err(e) => {
                crate::log_limited!(warn, error = %e, "no pipe for splice: copying through a buffer");
                None
            }
        }
    }

    /// Gives the pipe back for another connection, if it is empty and the
    /// pool has room; else closes it. A pipe still holding bytes is never
    /// reused: they belong to this connection alone.
    pub fn release(self) {
        if self.pending == 0 {
            let mut idle = crate::locked(&IDLE);
            if idle.len() < KEPT {
                idle.push(self);
            }
        }
    }
}

/// Pipes that exist now, in use or kept (for tests and /metrics).
pub fn open() -> usize {
    OPEN.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::{AsRawFd, RawFd};

    /// Whether the pool holds the pipe whose read end is `fd`.
    fn kept(fd: RawFd) -> bool {
        crate::locked(&IDLE)
            .iter()
            .any(|p| p.read.as_raw_fd() == fd)
    }

    #[test]
    fn a_pipe_with_bytes_is_closed_and_an_empty_one_kept() {
        let mut pipe = Pipe::get().expect("a pipe");
        let fd = pipe.read.as_raw_fd();
        std::fs::File::from(pipe.write.try_clone().unwrap())
            .write_all(b"x")
            .unwrap();
        pipe.pending = 1;
        pipe.release();
        assert!(!kept(fd), "a pipe holding a byte went back to the pool");

        let pipe = Pipe::get().expect("a pipe");
        let fd = pipe.read.as_raw_fd();
        pipe.release();
        assert!(kept(fd), "an empty pipe was not kept");
        assert!(open() >= 1);
    }
}
