//! The one accept loop every listener runs (http, https, tcp, admin and
//! its Unix socket): it hands each connection on, backs off when accepting
//! fails, and ends on the listener's shutdown signal. Limits on
//! connections belong here.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// A listening socket: TCP for every listener, Unix for the admin socket.
pub trait Listening {
    type Stream;
    type Peer;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send;
}

impl Listening for TcpListener {
    type Stream = TcpStream;
    type Peer = SocketAddr;
    fn accept(&self) -> impl Future<Output = std::io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

impl Listening for UnixListener {
    type Stream = UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    fn accept(
        &self,
    ) -> impl Future<Output = std::io::Result<(UnixStream, tokio::net::unix::SocketAddr)>> + Send
    {
        UnixListener::accept(self)
    }
}

/// How long to wait after a failed accept before trying again.
const BACKOFF: Duration = Duration::from_millis(50);

/// Accepts on `listener` until `shutdown`, giving each connection to
/// `serve` (which spawns its task). `name` identifies the listener in logs.
pub async fn accept_loop<L: Listening>(
    listener: L,
    name: impl Display,
    shutdown: CancellationToken,
    mut serve: impl FnMut(L::Stream, L::Peer),
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => serve(stream, peer),
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                crate::log_limited!(warn, listener = %name, error = %e, "accept failed");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}
