//! The one accept loop every listener runs (http, https, tcp, admin): it
//! hands each connection on, backs off when accepting fails, and ends on
//! the listener's shutdown signal. Limits on connections belong here.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long to wait after a failed accept before trying again.
const BACKOFF: Duration = Duration::from_millis(50);

/// Accepts on `listener` until `shutdown`, giving each connection to
/// `serve` (which spawns its task). `name` identifies the listener in logs.
pub async fn accept_loop(
    listener: TcpListener,
    name: impl Display,
    shutdown: CancellationToken,
    mut serve: impl FnMut(TcpStream, SocketAddr),
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
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}
