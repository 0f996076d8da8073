//! The one accept loop every listener runs (http, https, tcp, admin and
//! its Unix socket): it hands each connection on, backs off when accepting
//! fails, holds connections to the listener's `max_connections`
//! ([`Slots`]), and ends on the listener's shutdown signal.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::limits::{ClientConn, ClientLimits};

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

/// A listener's connection limit (`max_connections`) and count.
///
/// At the limit the accept loop stops accepting until a connection ends,
/// as HAProxy does with `maxconn`: new connections wait in the kernel's
/// backlog (their handshake done by the kernel) and are served in order as
/// slots free, instead of being accepted and closed at once, which would
/// spend a descriptor and a system call on each attempt, turn a short
/// peak into errors, and let a client that reconnects in a loop spin the
/// loop. Past the backlog (`somaxconn`) the kernel drops SYNs and clients
/// retry. Not a tokio `Semaphore`: a reload may lower the limit below the
/// connections open, which a semaphore cannot take back.
pub struct Slots {
    open: AtomicUsize,
    /// `usize::MAX`: no limit.
    max: AtomicUsize,
    /// Times accepting paused at the limit.
    limited: AtomicU64,
    /// Connections accepted since start.
    accepted: AtomicU64,
    freed: Notify,
    /// Per-client limits (`client_limits`), checked once the client's
    /// address is known (after a PROXY header): [`Slot::admit`].
    pub clients: Arc<ClientLimits>,
}

impl Slots {
    pub fn new(max: Option<u32>) -> Arc<Slots> {
        let slots = Slots {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(usize::MAX),
            limited: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            freed: Notify::new(),
            clients: Arc::default(),
        };
        slots.set_max(max);
        Arc::new(slots)
    }

    /// A new limit (a reload), for the connections accepted from now on.
    pub fn set_max(&self, max: Option<u32>) {
        let max = max.map_or(usize::MAX, |m| m as usize);
        self.max.store(max, Ordering::Relaxed);
        // A raised limit: the loop, if it waits, looks again.
        self.freed.notify_one();
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// How many times accepting paused at the limit.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Returns once a connection may be accepted. Only the accept loop
    /// waits here and only it takes slots, so one stays free until it
    /// takes it (a reload lowering the limit meanwhile lets that one in).
    async fn wait_free(&self) {
        let mut counted = false;
        loop {
            // Made before looking, so a release in between is not missed.
            let freed = self.freed.notified();
            if self.open.load(Ordering::Relaxed) < self.max.load(Ordering::Relaxed) {
                return;
            }
            if !counted {
                counted = true;
                self.limited.fetch_add(1, Ordering::Relaxed);
            }
            freed.await;
        }
    }

    fn take(self: &Arc<Self>) -> Slot {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Slot {
            slots: Some(self.clone()),
            client: ClientConn::none(),
        }
    }
}

/// One connection's place under its listener's limit, and under its
/// client's (once [`Slot::admit`]ted), freed when dropped: moved into the
/// connection's task, it ends with the task.
pub struct Slot {
    slots: Option<Arc<Slots>>,
    client: ClientConn,
}

impl Slot {
    /// A slot of nothing (listeners without [`Slots`]).
    pub fn none() -> Slot {
        Slot {
            slots: None,
            client: ClientConn::none(),
        }
    }

    /// Counts the connection against the limit of its client, `ip`; false
    /// (counted) when that client has as many open as it may: close it.
    pub fn admit(&mut self, ip: std::net::IpAddr) -> bool {
        let Some(slots) = &self.slots else {
            return true;
        };
        match slots.clients.connect(ip) {
            Some(client) => {
                self.client = client;
                true
            }
            None => false,
        }
    }

    /// The listener's per-client limits, for requests.
    pub fn clients(&self) -> Option<&ClientLimits> {
        self.slots.as_deref().map(|s| &*s.clients)
    }
}

impl Slot {
    /// Runs `connection`, keeping this place until it ends.
    pub async fn hold<F: Future>(self, connection: F) -> F::Output {
        let out = connection.await;
        drop(self);
        out
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.open.fetch_sub(1, Ordering::Relaxed);
            slots.freed.notify_one();
        }
    }
}

/// Accepts on `listener` until `shutdown`, giving each connection and its
/// [`Slot`] to `serve` (which spawns its task and moves the slot into
/// it). With `slots`, no more than its limit are open at once: at the
/// limit, accepting waits. `name` identifies the listener in logs.
pub async fn accept_loop<L: Listening>(
    listener: L,
    name: impl Display,
    shutdown: CancellationToken,
    slots: Option<Arc<Slots>>,
    mut serve: impl FnMut(L::Stream, L::Peer, Slot),
) {
    loop {
        if let Some(slots) = &slots {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = slots.wait_free() => {}
            }
        }
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let slot = slots.as_ref().map_or_else(Slot::none, Slots::take);
                serve(stream, peer, slot)
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                crate::log_limited!(warn, listener = %name, error = %e, "accept failed");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}
