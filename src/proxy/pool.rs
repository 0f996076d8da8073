//! Keep-alive connections to backends.
//!
//! A connection goes back to its backend's idle list only once its response
//! body has been read to the end, so whatever is taken from the list is
//! free for a new request. It may still have been closed by the backend in
//! the meantime: `try_send_request` then hands the request back unwritten,
//! and the caller tries again.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::BackendRequestBody;

/// Below the common backend keep-alive timeouts (Apache httpd: 5 s), so we
/// drop a connection before the backend is likely to.
const IDLE_LIMIT: Duration = Duration::from_secs(4);
/// Idle connections kept per backend; more are closed when returned.
const MAX_IDLE: usize = 256;

pub type Sender = SendRequest<BackendRequestBody>;

#[derive(Default)]
pub struct IdleConnections {
    conns: Mutex<Vec<(Sender, Instant)>>,
}

impl IdleConnections {
    /// The most recently used idle connection that still looks open.
    pub fn take(&self) -> Option<Sender> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Some((sender, since)) = conns.pop() {
            if !sender.is_closed() && now.duration_since(since) < IDLE_LIMIT {
                return Some(sender);
            }
        }
        None
    }

    pub fn put(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() < MAX_IDLE {
            conns.push((sender, Instant::now()));
        }
    }

    pub fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Opens a new connection to `addr` within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Sender> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(backend = %addr, error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}
