//! DNS over TCP (RFC 7766): a task per connection reads length-prefixed
//! messages one after another and answers each through the general path
//! (`wire`), counted as over UDP, FORMERRs for unparsable messages
//! included, or a zone transfer it may have (`transfer`) as several
//! messages, built whole before the first is written; never rate limited
//! (RRL's slip sends clients here). At most
//! `[dns] tcp_max_connections` are open at once over every listener (the
//! accept loop then waits; a reload's limit applies within a second), a
//! connection idle for `tcp_idle_timeout` is
//! closed, as is one that has had `tcp_max_queries` answers, and every
//! one at shutdown. Answers go out in order, one at a time, so a client
//! pipelining queries has at most one in flight.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use hickory_server::net::xfer::Protocol;
use metrics::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{SharedDnsData, count, transfer, wire};
use crate::accept::{Slots, accept_loop};
use crate::metrics::{DNS_TCP_CLOSED, DNS_TCP_LIMITED};

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
    let max = data.load().compiled.tcp.max_connections;
    // One limit over every listener; its pauses counted once.
    let slots = Slots::new(Some(max));
    let counted = Arc::new(AtomicU64::new(0));
    let mut listening = JoinSet::new();
    listening.spawn(follow_reloads(
        data.clone(),
        slots.clone(),
        shutdown.clone(),
    ));
    for listener in listeners {
        listening.spawn(listen(
            listener,
            data.clone(),
            slots.clone(),
            counted.clone(),
            shutdown.clone(),
        ));
    }
    while let Some(ended) = listening.join_next().await {
        ended.map_err(|e| io::Error::other(format!("DNS over TCP stopped: {e}")))?;
    }
    Ok(())
}

/// Accepts on `listener` until `shutdown`, within `slots`, then closes the
/// connections still open. `counted`: the pauses of `slots` already in
/// the metric.
async fn listen(
    listener: TcpListener,
    data: SharedDnsData,
    slots: Arc<Slots>,
    counted: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let name = match listener.local_addr() {
        Ok(addr) => format!("dns tcp {addr}"),
        Err(_) => "dns tcp".to_owned(),
    };
    let mut connections = JoinSet::new();
    let limits = slots.clone();
    accept_loop(
        listener,
        name,
        shutdown,
        Some(slots),
        |stream, peer, slot| {
            let limited = limits.limited();
            let before = counted.swap(limited, Ordering::Relaxed);
            if limited > before {
                counter(&LIMITED, DNS_TCP_LIMITED, None).increment(limited - before);
            }
            connections.spawn(slot.hold(connection(stream, peer, data.clone())));
            // The results of connections that ended are not kept.
            while connections.try_join_next().is_some() {}
        },
    )
    .await;
    connections.shutdown().await;
}

/// How soon a reload's `tcp_max_connections` applies.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Applies a reload's `tcp_max_connections` to `slots` (within
/// [`RELOAD_POLL`]), also while the accept loops wait at the old limit,
/// until `shutdown`. The data has no change notification; one load a
/// second costs nothing.
async fn follow_reloads(data: SharedDnsData, slots: Arc<Slots>, shutdown: CancellationToken) {
    let mut max = data.load().compiled.tcp.max_connections;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = tokio::time::sleep(RELOAD_POLL) => {}
        }
        let now = data.load().compiled.tcp.max_connections;
        if now != max {
            slots.set_max(Some(now));
            max = now;
        }
    }
}

static LIMITED: OnceLock<Counter> = OnceLock::new();
static CLOSED_IDLE: OnceLock<Counter> = OnceLock::new();
static CLOSED_MAX_QUERIES: OnceLock<Counter> = OnceLock::new();

fn counter(
    cell: &'static OnceLock<Counter>,
    name: &'static str,
    reason: Option<&'static str>,
) -> &'static Counter {
    cell.get_or_init(|| match reason {
        Some(reason) => metrics::counter!(name, "reason" => reason),
        None => metrics::counter!(name),
    })
}

/// Answers the messages of one connection in order until the client
/// closes it, stays idle for `tcp_idle_timeout`, has had `tcp_max_queries`
/// answers, or a read or write fails.
async fn connection(mut stream: TcpStream, src: SocketAddr, data: SharedDnsData) {
    let _ = stream.set_nodelay(true);
    let limits = data.load().compiled.tcp;
    let mut message = Vec::new();
    let mut reply = Vec::new();
    let mut framed = Vec::new();
    let mut answers: u32 = 0;
    loop {
        let read = async {
            let len = stream.read_u16().await?;
            message.resize(usize::from(len), 0);
            stream.read_exact(&mut message).await
        };
        match tokio::time::timeout(limits.idle_timeout, read).await {
            Ok(Ok(_)) => {}
            // Closed or reset.
            Ok(Err(_)) => return,
            Err(_) => {
                counter(&CLOSED_IDLE, DNS_TCP_CLOSED, Some("idle")).increment(1);
                return;
            }
        }
        let started = Instant::now();
        // A zone transfer is many messages; everything else one.
        let answered = wire::catching_panics(|| {
            let data = data.load();
            if let Some(messages) = transfer::answer(&data, &message, src) {
                return Answered::Transfer(messages);
            }
            match wire::answer(&data, &message, src, Protocol::Tcp, &mut reply) {
                Some(_) => Answered::One,
                None => Answered::Nothing,
            }
        });
        let messages = match answered {
            Ok(Answered::Transfer(messages)) => messages,
            Ok(Answered::One) => vec![std::mem::take(&mut reply)],
            Ok(Answered::Nothing) => continue,
            Err(at) => {
                PANICS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(src, at);
                return;
            }
        };
        for m in &messages {
            if !send(&mut stream, &mut framed, m, limits.idle_timeout, src).await {
                return;
            }
        }
        // One answer, however many messages it took.
        if let Some(first) = messages.first() {
            count::count_tcp(first, started.elapsed());
        }
        // The buffer goes back for the next answer.
        if let Ok([one]) = <[Vec<u8>; 1]>::try_from(messages) {
            reply = one;
        }
        answers = answers.saturating_add(1);
        if answers == limits.max_queries {
            counter(&CLOSED_MAX_QUERIES, DNS_TCP_CLOSED, Some("max_queries")).increment(1);
            // Closed after the last answer is written: a client reads it,
            // then its end of file.
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// What one message on a connection got.
enum Answered {
    /// The messages of a zone transfer.
    Transfer(Vec<Vec<u8>>),
    /// One reply, in the connection's reply buffer.
    One,
    /// Nothing to send (a response, or no whole header).
    Nothing,
}

/// Writes `message` with its length prefix (through `framed`) within
/// `timeout`; false when the connection is to be dropped.
async fn send(
    stream: &mut TcpStream,
    framed: &mut Vec<u8>,
    message: &[u8],
    timeout: Duration,
    src: SocketAddr,
) -> bool {
    // Encoded within 64 KiB (TC past it), so the length fits.
    let Ok(len) = u16::try_from(message.len()) else {
        return false;
    };
    framed.clear();
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    match tokio::time::timeout(timeout, stream.write_all(framed)).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::debug!(%src, %error, "cannot send a DNS response");
            false
        }
        Err(_) => {
            counter(&CLOSED_IDLE, DNS_TCP_CLOSED, Some("idle")).increment(1);
            false
        }
    }
}
