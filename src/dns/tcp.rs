//! DNS over TCP (RFC 7766): a task per connection reads length-prefixed
//! messages one after another and answers each through the general path
//! (`wire`), counted as over UDP, FORMERRs for unparsable messages
//! included. A connection that sends nothing for [`TCP_IDLE_TIMEOUT`] is
//! closed, and every one at shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{SharedDnsData, count, wire};
use crate::accept::accept_loop;

/// A TCP connection that sends no query (or takes longer to send one, or
/// to take its answer) for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Panics while answering over TCP, logged as the UDP threads log theirs.
static PANICS: Mutex<wire::PanicLog> = Mutex::new(wire::PanicLog::new());

/// Serves `listeners` until `shutdown`, then returns once their open
/// connections are closed.
pub(super) async fn serve(
    listeners: Vec<TcpListener>,
    data: SharedDnsData,
    shutdown: CancellationToken,
) -> io::Result<()> {
    wire::quiet_answer_panics();
    let mut listening = JoinSet::new();
    for listener in listeners {
        listening.spawn(listen(listener, data.clone(), shutdown.clone()));
    }
    while let Some(ended) = listening.join_next().await {
        ended.map_err(|e| io::Error::other(format!("DNS over TCP stopped: {e}")))?;
    }
    Ok(())
}

/// Accepts on `listener` until `shutdown`, then closes the connections
/// still open.
async fn listen(listener: TcpListener, data: SharedDnsData, shutdown: CancellationToken) {
    let name = match listener.local_addr() {
        Ok(addr) => format!("dns tcp {addr}"),
        Err(_) => "dns tcp".to_owned(),
    };
    let mut connections = JoinSet::new();
    accept_loop(listener, name, shutdown, None, |stream, peer, _| {
        connections.spawn(connection(stream, peer, data.clone()));
        // The results of connections that ended are not kept.
        while connections.try_join_next().is_some() {}
    })
    .await;
    connections.shutdown().await;
}

/// Answers the messages of one connection in order until the client
/// closes it, stays idle for [`TCP_IDLE_TIMEOUT`], or a read or write
/// fails.
async fn connection(mut stream: TcpStream, src: SocketAddr, data: SharedDnsData) {
    let _ = stream.set_nodelay(true);
    let mut message = Vec::new();
    let mut reply = Vec::new();
    let mut framed = Vec::new();
    loop {
        let read = async {
            let len = stream.read_u16().await?;
            message.resize(usize::from(len), 0);
            stream.read_exact(&mut message).await
        };
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, read).await {
            Ok(Ok(_)) => {}
            // Closed, reset or idle.
            Ok(Err(_)) | Err(_) => return,
        }
        let started = Instant::now();
        let answered = wire::catching_panics(|| {
            wire::answer(&data.load(), &message, src, Protocol::Tcp, &mut reply)
        });
        match answered {
            Ok(true) => {}
            Ok(false) => continue,
            Err(at) => {
                PANICS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(src, at);
                return;
            }
        }
        // Encoded within 64 KiB (TC past it), so the length fits.
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        framed.clear();
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed)).await {
            Ok(Ok(())) => count::count_tcp(&reply, started.elapsed()),
            Ok(Err(error)) => {
                tracing::debug!(%src, %error, "cannot send a DNS response");
                return;
            }
            Err(_) => return,
        }
    }
}
