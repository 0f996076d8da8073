//! The L7 path: accept, read a request, route it to a pool, pick a
//! backend, forward with timeouts and retries, stream the answer back.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::activity::{Activity, IDLE_TIMEOUT, MAX_HEAD, TrackedIo};
use super::answer_timer::AnswerTimer;
use super::body::{BoxError, Completion, ResponseBody};
use super::client_cert::{self, ClientCert};
use super::compress;
use super::h1::Answer;
use super::halves::Socket;
use super::header_rules::{self, Reply};
use super::headers::{self, host_name};
use super::stall::Stalls;
use super::validate::{self, Refusal};
use super::woken::Woken;
use crate::accept::{Slot, Slots, accept_loop};
use crate::accesslog::{self, TlsInfo};
use crate::admission::{Denied, RetryGuard};
use crate::balance;
use crate::config::{DEFAULT_MAX_CONCURRENT_STREAMS, HashKey, Http1Server, Timeouts};
use crate::conn_lock::ConnLock;
use crate::held_writes::{self, HeldWrites};
use crate::limits::RetryAfter;
use crate::locked;
use crate::outlier::Outcome;
use crate::proxy_protocol;
use crate::rules::Verdict;
use crate::stamp::Stamp;
use crate::state::{ActiveGuard, Listener, ListenerId, Pool, Route, SharedSnapshot, Snapshot};
use crate::tcp_io::TcpIo;
use crate::upstream::{
    self, Added, BackendError, BackendRequestBody, BodyState, RequestBody, unread::Unread,
};

/// What every connection of one listener shares.
pub struct HttpContext {
    pub snapshot: SharedSnapshot,
    /// The listener's identity in the snapshot.
    pub id: ListenerId,
    pub proto: &'static str,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// hyper's server settings, made again when a reload changes
    /// `max_concurrent_streams` (the one setting a reload can change).
    server: ArcSwap<Server>,
}

struct Server {
    max_streams: u32,
    builder: auto::Builder<TokioExecutor>,
    /// For connections known to speak HTTP/2 (TLS agreed on it, or the
    /// client's first bytes were its preface): hyper-util's server would
    /// look at their first bytes for the version again, and read and
    /// write every byte through its `Rewind` (370 instructions a request,
    /// by `CLIENT=h2 benches/instructions.sh`).
    h2: http2::Builder<TokioExecutor>,
}

impl Server {
    fn new(max_streams: u32) -> Server {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // 64 KiB of head is plenty for real clients; past it: 431 (414
        // for a request line that fills it alone, see `TrackedIo`).
        builder.http1().max_buf_size(MAX_HEAD).half_close(false);
        builder.http2().max_concurrent_streams(max_streams);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.max_concurrent_streams(max_streams);
        Server {
            max_streams,
            builder,
            h2,
        }
    }
}

impl HttpContext {
    pub fn new(
        snapshot: SharedSnapshot,
        id: ListenerId,
        proto: &'static str,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(HttpContext {
            snapshot,
            id,
            proto,
            tasks,
            shutdown,
            server: ArcSwap::from_pointee(Server::new(DEFAULT_MAX_CONCURRENT_STREAMS)),
        })
    }

    /// The server settings for a connection of a listener configured with
    /// `max_streams`.
    fn server(&self, max_streams: u32) -> Arc<Server> {
        let server = self.server.load_full();
        if server.max_streams == max_streams {
            return server;
        }
        let server = Arc::new(Server::new(max_streams));
        self.server.store(server.clone());
        server
    }
}

/// Accepts until `shutdown`, handing each connection to its own task.
/// At most `slots`' limit open at once.
pub async fn serve(listener: TcpListener, ctx: Arc<HttpContext>, slots: Arc<Slots>) {
    let (name, shutdown) = (ctx.id.clone(), ctx.shutdown.clone());
    accept_loop(
        listener,
        name,
        shutdown,
        Some(slots),
        |mut stream, peer, slot| {
            let _ = stream.set_nodelay(true);
            let ctx2 = ctx.clone();
            ctx.tasks.spawn(super::prefetched(async move {
                // Read in the connection's task: a slow PROXY header must not
                // hold up accepting.
                let Some(client) =
                    client_address(&mut stream, peer, &ctx2.snapshot, &ctx2.id).await
                else {
                    return;
                };
                let mut slot = slot;
                if !slot.admit(client.ip()) {
                    tracing::debug!(client = %client, "client over its connection limit: closed");
                    return;
                }
                serve_connection(TcpIo::new(stream), client, None, None, ctx2, Arc::new(slot)).await
            }));
        },
    )
    .await
}

/// For an http or https listener (`bind` in `snapshot`): the address of
/// the client, `peer` itself or, when the listener expects a PROXY header,
/// the one that header states. `None`: drop the connection (logged and
/// counted, or the listener is gone).
async fn client_address(
    stream: &mut TcpStream,
    peer: SocketAddr,
    snapshot: &SharedSnapshot,
    id: &ListenerId,
) -> Option<SocketAddr> {
    let (name, deadline) = match snapshot.load().listeners.get(id) {
        Some(l) if l.config.accept_proxy_protocol => {
            (l.config.name.clone(), l.config.timeouts.header)
        }
        Some(_) => return Some(peer),
        None => return None,
    };
    let local = stream.local_addr().unwrap_or(id.bind);
    proxy_protocol::accept(stream, peer, local, deadline, &name)
        .await
        .map(|a| a.source)
}

pub(super) struct ConnCtx {
    pub(super) ctx: Arc<HttpContext>,
    /// Its listener as found when it came, with the serial of the snapshot
    /// it was found in: see [`ConnCtx::listener_in`].
    listener: (u64, std::sync::Weak<Listener>),
    pub(super) peer: SocketAddr,
    client: headers::ClientAddr,
    pub(super) activity: Arc<Activity>,
    /// The connection's place under the listener's limit, shared with an
    /// upgraded tunnel that outlives it.
    slot: Arc<Slot>,
    /// Its HTTP/2 responses from backends, watched for stalls.
    stalls: Stalls,
    /// The last valid `:authority` of its HTTP/2 requests, shared by those
    /// that name it again rather than copied into a new field value (an
    /// allocation and a validation a request).
    authority: Mutex<Option<HeaderValue>>,
    /// The last valid `Host` of its HTTP/1 requests (`validate::KnownHost`).
    known_host: ConnLock<validate::KnownHost>,
    /// What the client negotiated, on https listeners (for the access log).
    tls: Option<TlsInfo>,
    /// On https listeners with `client_auth`: what backends learn of the
    /// client's certificate.
    client_cert: Option<ClientCert>,
}

/// Serves HTTP on `io` until it ends; `slot` is held until then, or until
/// a tunnel upgraded from it ends. `tls`: what an https client negotiated;
/// `client_cert`: its certificate, on a listener that asks for one.
// Not an async fn: one keeps its arguments for its whole life, each
// connection's task then holding the address, TLS facts and client
// certificate (232 bytes) beside the context made of them.
pub(super) fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    tls: Option<TlsInfo>,
    client_cert: Option<ClientCert>,
    ctx: Arc<HttpContext>,
    slot: Arc<Slot>,
) -> impl std::future::Future<Output = ()> + Send
where
    I: AsyncRead + AsyncWrite + Socket + Unpin + Send + 'static,
{
    let snapshot = ctx.snapshot.load();
    let settings = snapshot.listeners.get(&ctx.id).map(|l| {
        let settings = (
            l.config.timeouts,
            l.config.max_concurrent_streams,
            l.config.http1_server,
            l.config.splice,
            l.unread,
        );
        (settings, (snapshot.serial, Arc::downgrade(l)))
    });
    drop(snapshot);
    // No context for a listener gone: the connection is then dropped.
    let served = settings.map(|(settings, listener)| {
        let conn_ctx = Arc::new(ConnCtx {
            ctx,
            listener,
            peer,
            client: headers::ClientAddr::new(peer.ip()),
            activity: Activity::new(),
            slot,
            stalls: Stalls::new(),
            authority: Mutex::new(None),
            known_host: ConnLock::new(validate::KnownHost::default()),
            tls,
            client_cert,
        });
        (settings, conn_ctx)
    });
    let Some(((timeouts, max_streams, http1_server, splice, unread), conn_ctx)) = served else {
        return Serving::Done;
    };
    let h2 = io.agreed_on_h2();
    if http1_server == Http1Server::Geolb && !h2 {
        // What geolb's own server does not serve (HTTP/2, upgrades) it
        // hands back with the bytes it read, to go on with hyper.
        return Serving::Own {
            own: super::h1::serve(io, conn_ctx.clone(), timeouts, splice, unread),
            then: Some((conn_ctx, timeouts, max_streams)),
        };
    }
    Serving::Hyper {
        hyper: hyper_serving(io, conn_ctx, timeouts, max_streams, h2),
    }
}

/// [`serve_hyper`]'s future, boxed: hyper's connection state is several
/// KiB, which every connection's task would otherwise carry, also those
/// geolb serves. The stream goes in boxed too (see `serve_hyper`).
fn hyper_serving<I>(
    io: I,
    conn_ctx: Arc<ConnCtx>,
    timeouts: Timeouts,
    max_streams: u32,
    h2: bool,
) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    super::boxed_in_place(|| serve_hyper(Box::new(io), conn_ctx, timeouts, max_streams, h2))
}

pin_project_lite::pin_project! {
    /// A connection being served: by geolb's HTTP/1 server and then, with
    /// what it hands back, by hyper; or by hyper from the start. Not an
    /// async block: one keeps what it captured (the stream it moves into
    /// either server: 1,224 bytes over TLS) for the connection's life.
    #[project = ServingProj]
    enum Serving<Own> {
        Own {
            #[pin]
            own: Own,
            then: Option<(Arc<ConnCtx>, Timeouts, u32)>,
        },
        Hyper {
            hyper: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        },
        Done,
    }
}

impl<Own, I> std::future::Future for Serving<Own>
where
    Own: std::future::Future<Output = Option<super::h1::Rewind<I>>>,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = ();

    // Each poll of an HTTP/1 connection's task comes through here: its
    // one test is for geolb's server, the hand-over to hyper kept apart.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let ServingProj::Own { own, .. } = self.as_mut().project() {
            let rest = ready!(own.poll(cx));
            return self.hand_over(rest, cx);
        }
        self.poll_hyper(cx)
    }
}

impl<Own, I> Serving<Own>
where
    Own: std::future::Future<Output = Option<super::h1::Rewind<I>>>,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// geolb's server is done: hyper goes on with what it handed back.
    #[cold]
    #[inline(never)]
    fn hand_over(
        mut self: Pin<&mut Self>,
        rest: Option<super::h1::Rewind<I>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let then = match self.as_mut().project() {
            ServingProj::Own { then, .. } => then.take(),
            _ => None,
        };
        match (rest, then) {
            (Some(rest), Some((conn_ctx, timeouts, max_streams))) => {
                let h2 = rest.opens_http2();
                let hyper = hyper_serving(rest, conn_ctx, timeouts, max_streams, h2);
                self.set(Serving::Hyper { hyper });
                self.poll_hyper(cx)
            }
            _ => {
                self.set(Serving::Done);
                Poll::Ready(())
            }
        }
    }

    fn poll_hyper(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.as_mut().project() {
            ServingProj::Hyper { hyper } => {
                ready!(hyper.as_mut().poll(cx));
                self.set(Serving::Done);
                Poll::Ready(())
            }
            _ => Poll::Ready(()),
        }
    }
}

/// Serves `io` with hyper (HTTP/1.x or HTTP/2) until it ends. `h2`: TLS
/// agreed on HTTP/2, or the client opened with its preface (h2c by prior
/// knowledge): served by hyper's HTTP/2 server alone, its writes held for
/// each poll of the connection ([`HeldWrites`]).
///
/// `io` comes boxed, and leaves its box before the first await: an async
/// fn keeps its arguments for its whole life, and a stream given by
/// value stayed in the future beside hyper's connection that it was
/// moved into (1,224 bytes a connection over TLS, by
/// `-Zprint-type-sizes`), for one allocation a connection.
async fn serve_hyper<I>(
    io: Box<I>,
    conn_ctx: Arc<ConnCtx>,
    timeouts: Timeouts,
    max_streams: u32,
    h2: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // In a block: the emptied box is freed at its end, not the function's.
    let io = {
        let boxed = io;
        *boxed
    };
    let ctx = conn_ctx.ctx.clone();
    let peer = conn_ctx.peer;
    let activity = conn_ctx.activity.clone();
    let server = ctx.server(max_streams);
    let watched = conn_ctx.clone();
    let slot = conn_ctx.slot.clone();
    // Each request's timer starts past any deadline (`before` brings it in
    // to the request's), from this time read once: `sleep(Duration::MAX)`
    // read the clock for every stream.
    let far_future = Stamp::NEVER.instant();
    let service = service_fn(move |req: Request<Incoming>| {
        let conn_ctx = conn_ctx.clone();
        // Boxed as it is made: hyper spawns each HTTP/2 stream as a task,
        // and tokio moves a task's future four times on the way in and once
        // out. Boxed, the routing and forwarding state (2.5 KB at 709a6a0)
        // and the request are moved by none of them (2,340 instructions a
        // request for the state, by `CLIENT=h2 benches/instructions.sh`).
        // Its memory is the thread's, kept for the next request's.
        crate::spares::Recycled::pin_in_place(|| async move {
            let h2 = req.version() == Version::HTTP_2;
            let timer = std::pin::pin!(AnswerTimer::new(tokio::time::sleep_until(far_future)));
            let (mut lent, progress) = upstream::lend(req.map(RequestBody::Hyper));
            let mut out = None;
            respond(
                &mut lent, progress, None, None, &conn_ctx, timer, false, &mut out,
            )
            .await;
            let (mut resp, request_id) = out.expect("respond answers every request");
            if let Some(id) = request_id {
                header_rules::put_request_id(resp.headers_mut(), &id);
            }
            if h2 {
                headers::dates_not_indexed(resp.headers_mut());
            }
            // Neither side holds the body inline: hyper keeps the body's
            // type in each stream's future (in every state, also before
            // the answer), and tokio moves that future whole as it spawns
            // it and sets its stages. Inline, a `ResponseBody` made it 480
            // bytes where a watched body is a pointer: 1,000 instructions
            // a request more over HTTP/2 (`CLIENT=h2
            // benches/instructions.sh`). geolb's own answers take a block
            // of the thread's, not an allocation.
            Ok::<_, Infallible>(if h2 && resp.body().streams_from_backend() {
                resp.map(|body| Either::Right(conn_ctx.stalls.watch(body)))
            } else {
                resp.map(|body| Either::Left(crate::spares::Recycled::pin(body)))
            })
        })
    });
    // Under the tracking: the bytes a lingering close drops are no
    // request line to measure.
    let io = super::linger::OnShutdown::new(
        io,
        activity.clone(),
        timeouts.idle,
        ctx.shutdown.clone(),
        slot,
        ctx.tasks.clone(),
    );
    let io = TrackedIo::for_requests(io, activity.clone());
    let (io, held) = if h2 {
        let io = HeldWrites::new(io);
        let drainer = io.drainer();
        (tokio_util::either::Either::Left(io), Some(drainer))
    } else {
        (tokio_util::either::Either::Right(io), None)
    };
    let conn = match h2 {
        true => HyperConn::H2 {
            conn: server.h2.serve_connection(TokioIo::new(io), service),
        },
        false => HyperConn::Auto {
            conn: server
                .builder
                .serve_connection_with_upgrades(TokioIo::new(io), service),
        },
    };
    tokio::pin!(conn);
    let watchdog = std::pin::pin!(activity.watchdog(Some(timeouts.header), timeouts.idle));
    let mut watchdog = Woken::new(watchdog);
    let mut draining = false;
    let first_request = activity.first_request();
    tokio::pin!(first_request);
    let mut first_seen = false;
    let listener_name = || {
        let snapshot = ctx.snapshot.load();
        let listener = snapshot.listeners.get(&ctx.id);
        listener.map_or_else(|| ctx.id.to_string(), |l| l.config.name.clone())
    };
    let stalls = watched.stalls.cut_stalled(timeouts.idle, listener_name);
    tokio::pin!(stalls);
    // Each polled only when it woke (see `woken`): the connection's task
    // wakes for every stream's traffic.
    let mut stalls = Woken::new(stalls);
    let cancelled = std::pin::pin!(ctx.shutdown.cancelled());
    let mut cancelled = Woken::new(cancelled);
    loop {
        // In order, not from a random branch: the connection first, as it
        // is what wakes the task nearly every time, and the side futures
        // cost nothing until woken (`Woken`).
        tokio::select! {
            biased;
            r = held_writes::drained(conn.as_mut(), held.as_ref()) => {
                if let Err(e) = r {
                    tracing::debug!(client = %peer, error = %e, "client connection ended");
                }
                return;
            }
            reason = &mut watchdog => {
                tracing::debug!(client = %peer, reason, "client connection cut");
                if reason == IDLE_TIMEOUT {
                    // Over HTTP/2, a GOAWAY first: the client knows no
                    // request was lost and opens a new connection (a
                    // gRPC client, whose keep-alive PINGs do not count
                    // as use, expects it). A response still open gets
                    // the grace before the cut, unless geolb stops.
                    conn.as_mut().graceful_shutdown();
                    let goaway = tokio::time::timeout(
                        GOAWAY_GRACE,
                        held_writes::drained(conn.as_mut(), held.as_ref()),
                    );
                    tokio::select! {
                        biased;
                        _ = goaway => {}
                        () = ctx.shutdown.cancelled() => {}
                    }
                }
                return;
            }
            () = &mut stalls => {}
            () = &mut first_request, if !first_seen => {
                first_seen = true;
                if draining {
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = &mut cancelled, if !draining => {
                draining = true;
                // A client that connected just before accepting stopped
                // has not sent its request yet: answer that one first.
                if first_seen {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// hyper serving one connection: HTTP/2 alone, or HTTP/1 and HTTP/2
    /// told apart by hyper-util (see `Server::h2`).
    #[project = HyperConnProj]
    enum HyperConn<H2, Auto> {
        H2 { #[pin] conn: H2 },
        Auto { #[pin] conn: Auto },
    }
}

impl<I, S, B> HyperConn<HyperH2<I, S>, HyperAuto<'_, I, S>>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.project() {
            HyperConnProj::H2 { conn } => conn.graceful_shutdown(),
            HyperConnProj::Auto { conn } => conn.graceful_shutdown(),
        }
    }
}

type HyperH2<I, S> = http2::Connection<I, S, TokioExecutor>;
type HyperAuto<'a, I, S> = auto::UpgradeableConnection<'a, I, S, TokioExecutor>;

impl<H2, Auto> std::future::Future for HyperConn<H2, Auto>
where
    H2: std::future::Future<Output = hyper::Result<()>>,
    Auto: std::future::Future<Output = Result<(), BoxError>>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            HyperConnProj::H2 { conn } => conn.poll(cx).map_err(Into::into),
            HyperConnProj::Auto { conn } => conn.poll(cx),
        }
    }
}

impl ConnCtx {
    /// Its listener in `snapshot`, if it is still there: in the snapshot
    /// the connection came in, the one found then rather than looked up
    /// again (a hash and a compare: 17,142 -> 17,060 instructions a
    /// request).
    fn listener_in(&self, snapshot: &Snapshot) -> Option<Arc<Listener>> {
        let (serial, found) = &self.listener;
        if *serial == snapshot.serial
            && let Some(listener) = found.upgrade()
        {
            return Some(listener);
        }
        snapshot.listeners.get(&self.ctx.id).cloned()
    }

    /// [`validate::authority`], with what the connection kept: over HTTP/2
    /// its last authority, over HTTP/1 its last valid `Host`.
    fn authority<B>(
        &self,
        req: &Request<B>,
        host: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>, Refusal> {
        if req.version() != Version::HTTP_2 {
            return validate::authority(req, host, None, Some(&mut self.known_host.lock()));
        }
        let mut last = locked(&self.authority);
        let found = validate::authority(req, None, last.as_ref(), None)?;
        if let Some(v) = &found
            && last.as_ref() != Some(v)
        {
            *last = Some(v.clone());
        }
        Ok(found)
    }
}

impl super::h1::Client for ConnCtx {
    fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.ctx.shutdown
    }

    // Not an async fn of its own: a layer more would be 280 bytes more of
    // future to move into its box on every request.
    fn respond<'a>(
        &'a self,
        lent: &'a mut Option<Request<BackendRequestBody>>,
        body_progress: Option<upstream::BodyProgress>,
        unread: Option<Box<Unread>>,
        host: Option<HeaderValue>,
        timer: Pin<&'a mut AnswerTimer>,
        out: &'a mut Option<Answer>,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        respond(lent, body_progress, unread, host, self, timer, true, out)
    }
}

/// What `fut` gives, or `None` if `due` comes first (polled in
/// `tokio::time::timeout`'s order: the future, then the timer). `timer`
/// is set again only if it would go off after `due`: one set for an
/// earlier request of the connection goes off early, and is set again
/// then. Setting it for every request cost 117 instructions a request
/// (`benches/callgrind_calls.py callees ... respond`), for deadlines that
/// nearly all go by unreached.
///
/// Not an async fn: its future would be one more level for the answer to
/// be moved through (240 bytes) and polled through. The timer is set
/// here, when it is called, which is when it is awaited.
fn before<'a, F: Future>(
    mut timer: Pin<&'a mut AnswerTimer>,
    due: Stamp,
    mut fut: Pin<&'a mut F>,
) -> impl Future<Output = Option<F::Output>> + 'a {
    if timer.due() > due {
        timer.as_mut().reset(due);
    }
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        loop {
            ready!(timer.as_mut().poll_fired(cx));
            if Stamp::now() >= due {
                return Poll::Ready(None);
            }
            timer.as_mut().reset(due);
        }
    })
}

/// How long a connection cut for idleness has to take its GOAWAY.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// Why no backend answered.
enum Failure {
    NoBackend,
    Connect(Arc<str>, io::Error),
    Timeout(Arc<str>, Duration),
    Backend(Arc<str>, BackendError),
    /// The client's body was malformed or cut off: its fault, not the
    /// backend's.
    ClientBody(BackendError),
    /// The request timed out waiting for the client's body.
    SlowClient(Duration),
    /// Every eligible backend was at `max_connections` and the queue was
    /// full, or the wait in it (the `Duration`) ran out.
    Queue(Denied, Duration),
    /// The client's body went past the route's `max_body` (these bytes).
    TooLarge(u64),
}

/// Whether the request may be sent again: it holds, or now takes, a place
/// in the pool's retry budget.
fn within_budget(pool: &Pool, retry: &mut Option<RetryGuard>) -> bool {
    if retry.is_none() {
        *retry = pool.try_retry();
    }
    retry.is_some()
}

/// What a body-less request is sent again from.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn request(&self, upstream: &upstream::Upstream) -> Request<BackendRequestBody> {
        let mut r = Request::new(Either::Right(Empty::<Bytes>::new()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        upstream.adapt(&mut r);
        r
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// Backends get origin-form over HTTP/1.1, whatever the client spoke,
/// and the target's authority, which won over any Host, as Host.
pub(super) fn to_origin_form<B>(req: &mut Request<B>, authority: Option<HeaderValue>) {
    if req.uri().authority().is_some() {
        if let Some(h) = authority {
            req.headers_mut().insert(header::HOST, h);
        }
        // The target's own path, shared, not parsed again into a copy (an
        // allocation for each HTTP/2 request, whose target has an
        // authority).
        let mut origin = http::uri::Parts::default();
        origin.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        *req.uri_mut() = Uri::from_parts(origin).unwrap_or_else(|_| Uri::from_static("/"));
    }
    *req.version_mut() = Version::HTTP_11;
}

/// The answer to the request in `lent`, with the listener's response header
/// rules applied.
/// `timer` times each backend's answer (`timeouts.request`): an HTTP/1
/// connection keeps one for all its requests, set as [`before`] says (a
/// new timer a request is put into the runtime's wheel and taken out
/// again: 275 instructions a request more, by `benches/instructions.sh`);
/// an HTTP/2 stream has its own.
///
/// The request is lent (`lent` holds it), not given: given, it was moved
/// into the caller's closure, into the future and with the future into
/// its box (180 instructions a request). The caller makes it the one sent
/// to the backend (its body a `ClientBody`, watched by `body_progress`),
/// and each try takes it from `lent`: taken out here and made that, it
/// was moved twice more, and had a place in this future too.
///
/// `copies_fields`: the answer goes to geolb's own HTTP/1 writer, which can
/// copy a backend's fields as they were read, never put in a map
/// (`upstream::h1::ReadFields`), when nothing here reads or changes them.
///
/// `unread`: the request's fields that geolb's HTTP/1 server passed on
/// unread, not in its map; they go into the map if the listener's config
/// now reads one of them (it was reloaded since the connection came).
///
/// `kept_host`: the request's one `Host`, which the same server kept out
/// of its map where it was the first field (`upstream::Added::host`).
///
/// The answer, and the `X-Request-Id` to write after its fields, go into
/// `out` (see `h1::requests`).
#[allow(clippy::too_many_arguments)]
async fn respond(
    lent: &mut Option<Request<BackendRequestBody>>,
    body_progress: Option<upstream::BodyProgress>,
    unread: Option<Box<Unread>>,
    kept_host: Option<HeaderValue>,
    conn: &ConnCtx,
    mut timer: Pin<&mut AnswerTimer>,
    copies_fields: bool,
    out: &mut Option<Answer>,
) {
    // Sent from where it was lent: each try takes it from there.
    let pending = lent;
    let Some(req) = pending.as_mut() else {
        return;
    };
    let mut reply = Reply::new(&conn.client, conn.peer.port(), conn.tls, conn.ctx.proto);
    let reply = &mut reply;
    // One async fn, not the rules around a handler of their own: each
    // layer moved the response (456 bytes) twice more.
    let resp = 'handled: {
        let start = Stamp::now();
        conn.activity.request_started();
        let snapshot = conn.ctx.snapshot.load();
        let Some(listener) = conn.listener_in(&snapshot) else {
            conn.activity.request_ended();
            break 'handled message(
                StatusCode::SERVICE_UNAVAILABLE,
                "this listener is shutting down",
                None,
            );
        };
        drop(snapshot);
        let mut added = Added::default();
        if let Some(u) = unread {
            if u.names().within(listener.unread) {
                added.pass_unread(u);
            } else {
                u.append_to(req.headers_mut());
                u.recycle();
            }
        }
        if let Some(h) = kept_host {
            added.set_host(h);
        }
        // The names the steps below look for, in one pass; each step
        // before the one that asks changes none of those it asks about.
        let sent = headers::Sent::of(req.headers());
        reply.start(&listener, req.headers_mut(), sent.request_id(), &mut added);
        let kept_host = added.host();

        if let Some(answer) = crate::acme::http01(req.uri().path()) {
            break 'handled acme_challenge(req, kept_host, reply, &listener, conn, start, answer);
        }
        if let Some(clients) = conn.slot.clients()
            && let Err(wait) = clients.request(conn.peer.ip())
        {
            break 'handled too_many_requests(req, kept_host, reply, &listener, conn, start, wait);
        }
        if let Err(why) = validate::method(req) {
            break 'handled refuse(req, kept_host, reply, &listener, conn, start, why);
        }
        // Routed on and sent to the backend alike.
        let mut host_value = match conn.authority(req, kept_host) {
            Ok(v) => v,
            Err(why) => break 'handled refuse(req, kept_host, reply, &listener, conn, start, why),
        };
        let path = match validate::path(req.uri().path()) {
            Ok(path) => path,
            Err(why) => break 'handled refuse(req, kept_host, reply, &listener, conn, start, why),
        };
        if let Some(uri) = path.decode_unreserved(req.uri()) {
            *req.uri_mut() = uri;
        }
        // Parsing the host costs an allocation; only routes and the access log need it.
        let host = if listener.routes.is_empty() && !listener.config.access_log {
            None
        } else {
            host_value.as_ref().and_then(host_name)
        };
        let route = listener.route(host.as_deref(), req.uri().path());
        let pool = route.pool.clone();
        let mut completion = Completion::of(req, reply, conn, &listener, route, start, || {
            host.clone().unwrap_or_default()
        });
        let mut max_body = None;
        if let Some(rules) = &route.rules {
            let length = req.headers().get(header::CONTENT_LENGTH);
            let (method, uri) = (req.method(), req.uri());
            if let Err(verdict) =
                rules.check(method, uri, length, host_value.as_ref(), conn.peer.ip())
            {
                break 'handled ruled(req, &listener, completion, verdict);
            }
            if let Some(uri) = rules.rewrite(req.uri()) {
                // A prefix that ends inside a segment can leave one that is
                // only dots (`/api..` on `/api`): refused as any other.
                if validate::path(uri.path()).is_err() {
                    break 'handled ruled(req, &listener, completion, Verdict::DotSegment);
                }
                *req.uri_mut() = uri;
            }
            max_body = rules.max_body();
        }

        let client_http1 = req.version() < Version::HTTP_2;
        let compress = route.compress.as_deref().map(|c| {
            let encoding = compress::negotiate(c, req.method(), req.version(), req.headers());
            (c, encoding)
        });
        // RFC 9112 §6.1: a request that came with Transfer-Encoding may have
        // carried a Content-Length too (hyper keeps only the chunked framing);
        // close the connection after it rather than trust what follows.
        let hop_by_hop = sent.hop_by_hop();
        let close_after = hop_by_hop.transfer_encoding();
        let upgrade = hop_by_hop.upgrade()
            && req.version() == Version::HTTP_11
            && headers::wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *req));
        if req.version() == Version::HTTP_2 {
            headers::join_cookies(req.headers_mut());
        }
        // Still what `hop_by_hop` found: only cookies were joined.
        headers::strip_present(req.headers_mut(), hop_by_hop, upgrade);
        if !req.body().is_end_stream()
            && matches!(*req.method(), Method::GET | Method::HEAD)
            && !req.headers().contains_key(header::CONTENT_LENGTH)
            && !pool.upstream.is_http2()
        {
            // hyper's HTTP/1 client sends a GET or HEAD whose body has no
            // length as having none, dropping a body the client sent in
            // chunks or HTTP/2 DATA frames: saying chunked sends it.
            req.headers_mut().insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        client_cert::strip_forged(req.headers_mut(), sent.client_cert());
        if let Some(cert) = &conn.client_cert {
            cert.add(req.headers_mut());
        }
        // Taken off before the request goes on (HAProxy's `indirect`).
        let pinned = pool.sticky.as_ref().and_then(|s| s.take(req.headers_mut()));
        // Given to the last that needs it, copied only for those after
        // (each copy a reference count taken and given back).
        let forwarded_host = if req.uri().authority().is_some() || route.headers.is_some() {
            host_value.clone()
        } else {
            host_value.take()
        };
        headers::add_forwarded(
            req.headers_mut(),
            sent,
            &conn.client,
            conn.ctx.proto,
            forwarded_host,
            &mut added,
        );
        reply.forward(route, host_value.as_ref(), req.headers_mut(), &mut added);
        if added.host().is_some() {
            // The target's authority takes the client's `Host`'s place.
            if req.uri().authority().is_some()
                && let Some(h) = host_value.take()
            {
                added.set_host(h);
            }
            // Only geolb's own HTTP/1 client writes the kept `Host`.
            if !pool.upstream.carries_own(upgrade) {
                added.host_into(req.headers_mut(), !pool.upstream.is_http2());
            }
        }
        to_origin_form(req, host_value);
        if upgrade && pool.upstream.is_http2() {
            break 'handled no_upgrade_over_http2(&listener, &pool.name, completion);
        }

        let key = pool.hash_on().map_or(0, |on| {
            // The key may be one of the added fields.
            added.put_into(req.headers_mut());
            request_key(on, conn.peer.ip(), req.headers(), added.host())
        });
        let timeouts = listener.config.timeouts;
        let retries = listener.config.retries as usize;
        let retry_on = listener.config.retry_on;
        // A body-less idempotent request can be rebuilt and sent again after a
        // backend closed on it; anything with a body cannot. geolb's own
        // client gives the head back after such a close, so only a retry on
        // the backend's status, or hyper's client, needs a copy made now.
        let replayable = is_idempotent(req.method()) && req.body().is_end_stream();
        // Boxed: made for few requests, it would take its 208 bytes in
        // every request's future. In a block of the thread's: to HTTP/2
        // backends it is made for every request (an allocation and its
        // free a request fewer: `BACKEND_PROTO=h2c benches/instructions.sh`).
        let mut replay = (replayable
            && (retry_on.any_status() || !pool.upstream.gives_back_sent_heads(upgrade)))
        .then(|| {
            crate::spares::Recycled::pin(Replay {
                method: req.method().clone(),
                uri: req.uri().clone(),
                headers: req.headers().clone(),
            })
        });
        if let (Either::Left(body), Some(max)) = (req.body_mut(), max_body) {
            body.limit(max);
        }
        completion.request_body = body_progress.clone();
        let body_state = || body_progress.as_ref().map(|p| p.state());
        pool.upstream.adapt(req);

        let queue_timeout = pool.config.limits.queue_timeout.unwrap_or(timeouts.connect);
        // Nothing below reads or changes the answer's fields but for a
        // sticky cookie set on a backend the client was not pinned to.
        let as_read = copies_fields
            && compress.is_none()
            && !close_after
            && client_upgrade.is_none()
            && !reply.changes_answer_fields();
        let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
        let mut failure = Failure::NoBackend;
        // Held from a request's first retry to its end, against the pool's
        // retry budget. Only retries of a request a backend received take
        // one: after a failed connect no backend got it, so sending it to
        // another adds no load to the pool.
        let mut retry: Option<RetryGuard> = None;
        // Stale pooled connections are retried on the same backend without
        // counting as a retry; this bounds how often that can happen.
        let mut stale_left = 8;
        let mut first_try = true;
        // Where a backend's answer is put (see `try_send_request`).
        let mut got = None;
        while tried.len() <= retries {
            let (index, active) = match pool
                .acquire_pinned(pinned, &tried, key, queue_timeout)
                .await
            {
                Ok(got) => got,
                Err(Denied::NoBackend) => break,
                Err(refusal) => {
                    failure = Failure::Queue(refusal, queue_timeout);
                    break;
                }
            };
            // Sent from its place (`try_send_request` takes it there);
            // made again for a retry from what a try used up.
            if pending.is_none() {
                *pending = replay.as_ref().map(|r| r.request(&pool.upstream));
            }
            if pending.is_none() {
                break;
            }
            if !tried.is_empty() {
                route.metrics.retried();
                pool.backends[index].metrics.retried();
            }
            tried.push(index);
            let backend = &pool.backends[index];
            // One clock read for the idle list's age check, the access
            // log's connect time and, for a kept connection, the send. On
            // the first try from a pool with no queue nothing was awaited
            // since `start`, which serves (one read fewer a request).
            let looked = if first_try && !pool.may_queue() {
                start
            } else {
                Stamp::now()
            };
            first_try = false;
            let connecting = completion.access.is_some().then_some(looked);
            // Matched as they come, no local between: a local moved out of
            // only on some paths keeps its place in the rest of this future
            // (the connection's 80 bytes, twice).
            let (mut sender, reused) =
                match pool.upstream.idle(&backend.shared.idle, upgrade, looked) {
                    Some(kept) => (kept, true),
                    None => match pool
                        .upstream
                        .connect(
                            &backend.shared.idle,
                            backend.addr,
                            timeouts.connect,
                            upgrade,
                        )
                        .await
                    {
                        Ok(connected) => (connected, false),
                        Err(e) => {
                            tracing::debug!(backend = %backend.label, error = %e, "connect failed");
                            pool.outcome(index, Outcome::Failure);
                            backend.metrics.connect_failed();
                            failure = Failure::Connect(backend.label.clone(), e);
                            if !retry_on.connect {
                                break;
                            }
                            continue;
                        }
                    },
                };
            let sent_at = if reused { looked } else { Stamp::now() };
            // A kept connection was sent on at once (`sent_at` is `looked`).
            let sent = connecting.map(|at| (sent_at.since(at), sent_at));
            let as_read = as_read && (pool.sticky.is_none() || pinned == Some(index));
            let due = sent_at.after(timeouts.request);
            // Pinned where it is made (the timeout and the await then move
            // a pointer, not the sending future), geolb's own client's in
            // a place of its own (see `send_own`). The answer is put in
            // `got`; the future, which holds that, ends with its block.
            let sent_or_failed = if sender.is_own() {
                let send = std::pin::pin!(sender.send_own(pending, &added, as_read, &mut got));
                before(timer.as_mut(), due, send).await
            } else {
                // In a block of its own: HTTP/2's sending future (2,440
                // bytes), kept in this future, made every request's box
                // 4,096 bytes, 64 lines that `prefetch` fetches whole
                // with many connections open; with geolb's own client's
                // in its place, 2,344 (`-Zprint-type-sizes`).
                let mut send = crate::spares::Recycled::pin_in_place(|| {
                    sender.try_send_request(pending, &added, &mut got)
                });
                before(timer.as_mut(), due, send.as_mut()).await
            };
            match sent_or_failed {
                None => {
                    failure = if body_state() == Some(BodyState::WaitingForClient) {
                        Failure::SlowClient(timeouts.request)
                    } else {
                        pool.outcome(index, Outcome::Failure);
                        backend.metrics.timed_out();
                        Failure::Timeout(backend.label.clone(), timeouts.request)
                    };
                    break;
                }
                Some(Ok(())) => {
                    let Some(mut resp) = got.take() else {
                        unreachable!("an answer sent is put in `got`")
                    };
                    backend
                        .metrics
                        .responded(resp.status().as_u16(), sent_at.elapsed());
                    completion.backend = Some(backend.metrics.clone());
                    let status = resp.status().as_u16();
                    pool.outcome(
                        index,
                        if status >= 500 {
                            Outcome::Status5xx
                        } else {
                            Outcome::Success
                        },
                    );
                    if retry_on.status(status)
                        && replay.is_some()
                        && tried.len() <= retries
                        && pool.any_eligible(&tried)
                        && within_budget(&pool, &mut retry)
                    {
                        tracing::debug!(backend = %backend.label, status, "retrying after the backend's answer");
                        // Its connection is reused only when nothing of the
                        // answer is left to read; else dropping closes it.
                        if resp.body().is_end_stream() {
                            backend.shared.idle.put(sender);
                        }
                        failure = Failure::NoBackend;
                        continue;
                    }
                    // Clients get HTTP/1.1 or HTTP/2 from their own connection.
                    *resp.version_mut() = Version::HTTP_11;
                    if let Some(sticky) = &pool.sticky
                        && pinned != Some(index)
                    {
                        sticky.set(resp.headers_mut(), index, conn.tls.is_some());
                    }
                    if let (Some(a), Some((connect, sent_at))) = (completion.access.as_mut(), sent)
                    {
                        a.backend = Some(backend.label.clone());
                        a.retries = (tried.len() - 1) as u32;
                        a.connect = Some(connect);
                        a.first_byte = Some(sent_at.elapsed());
                    }
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(client_upgrade) = client_upgrade
                    {
                        let backend_upgrade = hyper::upgrade::on(&mut resp);
                        conn.activity.tunnelled();
                        let tunnel = tunnel(client_upgrade, backend_upgrade, active, timeouts.idle);
                        let slot = conn.slot.clone();
                        conn.ctx.tasks.spawn(async move {
                            tunnel.await;
                            drop(slot);
                        });
                        headers::strip_hop_by_hop(resp.headers_mut(), true);
                        completion.status = 101;
                        let (parts, _) = resp.into_parts();
                        break 'handled Response::from_parts(
                            parts,
                            ResponseBody::message(Bytes::new(), Some(completion)),
                        );
                    }
                    match resp.body_mut().read_fields_mut() {
                        Some(read) => {
                            headers::strip_read(read);
                            reply.finish_read(read);
                        }
                        None => headers::strip_hop_by_hop(resp.headers_mut(), false),
                    }
                    if close_after {
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    completion.status = status;
                    completion.active = Some(active);
                    completion.retry = retry;
                    completion.sender = sender.returnable();
                    let (mut parts, body) = resp.into_parts();
                    let body = match compress {
                        Some((c, e)) => {
                            match compress::start(c, e, parts.status, &mut parts.headers, body) {
                                Ok(compressing) => {
                                    ResponseBody::compressed(compressing, completion)
                                }
                                Err(body) => ResponseBody::from_backend(body, completion),
                            }
                        }
                        None => ResponseBody::from_backend(body, completion),
                    };
                    // Made in its place: made whole first, as the answers
                    // that break out of this block are, it was moved there
                    // once more (376 bytes).
                    let (answer, request_id) = out.insert((Response::new(body), None));
                    *answer.status_mut() = parts.status;
                    *answer.version_mut() = parts.version;
                    upstream::put_headers(answer.headers_mut(), parts.headers);
                    *answer.extensions_mut() = parts.extensions;
                    seal(answer, request_id, reply, body_progress);
                    return;
                }
                Some(Err(mut e)) => {
                    if let Some(request) = e.take_message() {
                        // Closed before our request was written, or an
                        // HTTP/2 backend said it did not act on it (its
                        // body kept to go again): the same backend may be
                        // tried afresh.
                        *pending = Some(request);
                        if stale_left > 0 {
                            stale_left -= 1;
                            tried.pop();
                        }
                        continue;
                    }
                    if let Some(head) = e.take_sent_head()
                        && replayable
                        && replay.is_none()
                    {
                        replay = Some(crate::spares::Recycled::pin(Replay {
                            method: head.method,
                            uri: head.uri,
                            headers: head.headers,
                        }));
                    }
                    let err = e.into_error();
                    if let (Some(max), Some(BodyState::TooLarge)) = (max_body, body_state()) {
                        failure = Failure::TooLarge(max);
                        break;
                    }
                    if body_state() == Some(BodyState::Failed) {
                        failure = Failure::ClientBody(err);
                        break;
                    }
                    // The backend said it did not act on the request (an
                    // HTTP/2 backend closing gracefully, as nginx does every
                    // 1,000 requests, or refusing the stream): sent again as
                    // after a stale kept connection, neither a retry nor a
                    // failure of the backend.
                    if err.unprocessed() && replay.is_some() && stale_left > 0 {
                        stale_left -= 1;
                        tried.pop();
                        continue;
                    }
                    // A backend closing gracefully on a request it did not
                    // take, not to be sent again (a body past what is
                    // kept): the request fails, the backend did not. One
                    // refusing streams does count.
                    if !err.went_away() {
                        pool.outcome(index, Outcome::Failure);
                    }
                    let retryable = retry_on.reset
                        && replay.is_some()
                        && err.closed_without_answer()
                        && tried.len() <= retries
                        && within_budget(&pool, &mut retry);
                    tracing::debug!(backend = %backend.label, error = %err, retryable, "backend request failed");
                    failure = Failure::Backend(backend.label.clone(), err);
                    if !retryable {
                        break;
                    }
                }
            }
        }
        // The client learns what happened; which backend and why are for the
        // logs (and the access log), not for anyone who can send a request.
        let pool_name = &pool.name;
        let (status, text, backend, error) = match failure {
            Failure::NoBackend if tried.is_empty() => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no healthy backend in pool {pool_name}"),
                None,
                String::new(),
            ),
            Failure::NoBackend => (
                StatusCode::BAD_GATEWAY,
                format!("every backend of pool {pool_name} failed"),
                None,
                String::new(),
            ),
            Failure::Connect(b, e) if e.kind() == io::ErrorKind::TimedOut => (
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "could not connect to a backend of pool {pool_name} within {:?}",
                    timeouts.connect
                ),
                Some(b),
                e.to_string(),
            ),
            Failure::Connect(b, e) => (
                StatusCode::BAD_GATEWAY,
                format!(
                    "could not connect to a backend of pool {pool_name}: {}",
                    upstream::public_reason(&e)
                ),
                Some(b),
                e.to_string(),
            ),
            Failure::Timeout(b, t) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("a backend of pool {pool_name} did not answer within {t:?}"),
                Some(b),
                format!("no response head within {t:?}"),
            ),
            Failure::Backend(b, e) => {
                // Backend errors name no address, only what went wrong.
                let error = error_chain(&e);
                (
                    StatusCode::BAD_GATEWAY,
                    format!("a backend of pool {pool_name} failed: {error}"),
                    Some(b),
                    error,
                )
            }
            Failure::ClientBody(e) => {
                tracing::debug!(client = %conn.peer, error = %error_chain(&e), "request body failed");
                (
                    StatusCode::BAD_REQUEST,
                    "the request body is malformed or incomplete".to_owned(),
                    None,
                    String::new(),
                )
            }
            Failure::Queue(refusal, wait) => (
                StatusCode::SERVICE_UNAVAILABLE,
                if refusal == Denied::QueueFull {
                    format!("every backend of pool {pool_name} is busy and its queue is full")
                } else {
                    format!("every backend of pool {pool_name} stayed busy for {wait:?}")
                },
                None,
                String::new(),
            ),
            Failure::TooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                too_large(max),
                None,
                String::new(),
            ),
            Failure::SlowClient(t) => {
                tracing::debug!(client = %conn.peer, "request body too slow");
                (
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the request body did not arrive within {t:?}"),
                    None,
                    String::new(),
                )
            }
        };
        // The client's own failures: what it sends next cannot be trusted
        // to start a request.
        let client_fault = status.is_client_error();
        if let Some(backend) = backend {
            // Once a second at warn: a client can cause one per request.
            crate::log_limited!(
                warn,
                listener = %listener.config.name,
                pool = %pool_name,
                backend = %backend,
                status = status.as_u16(),
                error,
                "request failed"
            );
            if let Some(a) = completion.access.as_mut() {
                a.backend = Some(backend);
                a.retries = tried.len().saturating_sub(1) as u32;
            }
        }
        completion.status = status.as_u16();
        let mut resp = own_message(&listener, status, &text, completion);
        if client_fault && client_http1 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    };
    // Put in its place first: a tuple made with the id, then put
    // there, moved the response twice more.
    let (resp, request_id) = out.insert((resp, None));
    seal(resp, request_id, reply, body_progress);
}

/// What an answer gets last, in its place: its request's id, and whether
/// the request's body was left unread.
#[inline(always)]
fn seal(
    resp: &mut Response<ResponseBody>,
    request_id: &mut Option<crate::request_id::RequestId>,
    reply: &mut Reply<'_>,
    body_progress: Option<upstream::BodyProgress>,
) {
    *request_id = reply.finish(resp.headers_mut());
    if let Some(progress) = body_progress {
        // geolb's own answers were made before the body was watched:
        // theirs too says whether it was left unread.
        resp.body_mut().note_request_body(progress);
    }
}

impl Completion {
    /// For a request to `route` of `listener`, with its access log line
    /// (`host` as logged) if the listener keeps one.
    #[inline]
    fn of<B>(
        req: &Request<B>,
        reply: &Reply<'_>,
        conn: &ConnCtx,
        listener: &Listener,
        route: &Route,
        start: Stamp,
        host: impl FnOnce() -> String,
    ) -> Completion {
        Completion {
            start,
            status: 0,
            metrics: route.metrics.clone(),
            activity: conn.activity.clone(),
            active: None,
            retry: None,
            sender: None,
            bytes: 0,
            backend_bytes: None,
            backend: None,
            request_body: None,
            access: listener.config.access_log.then(|| {
                let header = |name| req.headers().get(name).cloned();
                Box::new(accesslog::Http {
                    client: conn.peer,
                    listener: listener.config.name.as_str().into(),
                    pool: route.pool.name.clone(),
                    backend: None,
                    method: req.method().clone(),
                    host: host(),
                    path: req
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_string(),
                    version: req.version(),
                    user_agent: header(header::USER_AGENT),
                    referer: header(header::REFERER),
                    request_id: reply.logged_id(req.headers()),
                    tls: conn.tls,
                    retries: 0,
                    connect: None,
                    first_byte: None,
                })
            }),
        }
    }
}

/// Answers a request that is not forwarded (see [`validate`]), counted
/// with the listener's default route; an HTTP/1 connection is closed after
/// it, its next bytes being suspect.
#[cold]
fn refuse<B>(
    req: &Request<B>,
    host: Option<&HeaderValue>,
    reply: &Reply<'_>,
    listener: &Listener,
    conn: &ConnCtx,
    start: Stamp,
    why: Refusal,
) -> Response<ResponseBody> {
    tracing::debug!(
        client = %conn.peer,
        listener = %listener.config.name,
        status = why.status.as_u16(),
        reason = why.reason,
        "request refused"
    );
    let mut resp = answer(
        req, host, reply, listener, conn, start, why.status, why.reason,
    );
    if why.status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(validate::ALLOW));
    }
    if req.version() < Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A message of our own for `req`, counted with the listener's default
/// route.
#[allow(clippy::too_many_arguments)]
fn answer<B>(
    req: &Request<B>,
    host: Option<&HeaderValue>,
    reply: &Reply<'_>,
    listener: &Listener,
    conn: &ConnCtx,
    start: Stamp,
    status: StatusCode,
    text: &str,
) -> Response<ResponseBody> {
    own_message(
        listener,
        status,
        text,
        own(req, host, reply, listener, conn, start, status),
    )
}

/// The completion of an answer of geolb's own, counted with the
/// listener's default route. `host`: the request's `Host` where its map
/// does not hold it (`upstream::Added::host`).
fn own<B>(
    req: &Request<B>,
    host: Option<&HeaderValue>,
    reply: &Reply<'_>,
    listener: &Listener,
    conn: &ConnCtx,
    start: Stamp,
    status: StatusCode,
) -> Completion {
    let mut completion = Completion::of(
        req,
        reply,
        conn,
        listener,
        &listener.default_route,
        start,
        || {
            host.or_else(|| req.headers().get(header::HOST))
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .unwrap_or_default()
        },
    );
    completion.status = status.as_u16();
    completion
}

/// An ACME HTTP-01 validation (RFC 8555 §8.3): the key authorization,
/// nothing else, for whichever listener the CA reached.
#[cold]
fn acme_challenge<B>(
    req: &Request<B>,
    host: Option<&HeaderValue>,
    reply: &Reply<'_>,
    listener: &Listener,
    conn: &ConnCtx,
    start: Stamp,
    key_authorization: Bytes,
) -> Response<ResponseBody> {
    let completion = own(req, host, reply, listener, conn, start, StatusCode::OK);
    let mut resp = Response::new(ResponseBody::message(key_authorization, Some(completion)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// 429 for a client over its `requests_per_second`. The connection stays
/// open: its next request is well framed, only early.
#[cold]
fn too_many_requests<B>(
    req: &Request<B>,
    host: Option<&HeaderValue>,
    reply: &Reply<'_>,
    listener: &Listener,
    conn: &ConnCtx,
    start: Stamp,
    wait: RetryAfter,
) -> Response<ResponseBody> {
    tracing::debug!(client = %conn.peer, listener = %listener.config.name, "client over its request rate: 429");
    let text = "this client sends requests faster than this listener allows";
    let mut resp = answer(
        req,
        host,
        reply,
        listener,
        conn,
        start,
        StatusCode::TOO_MANY_REQUESTS,
        text,
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait.seconds()));
    resp
}

#[cold]
fn no_upgrade_over_http2(
    listener: &Listener,
    pool: &str,
    mut completion: Completion,
) -> Response<ResponseBody> {
    completion.status = 502;
    let text = format!(
        "pool {pool} speaks HTTP/2 to its backends, which cannot carry an HTTP/1.1 upgrade"
    );
    own_message(listener, StatusCode::BAD_GATEWAY, &text, completion)
}

fn too_large(max: u64) -> String {
    format!("the request body is larger than this route allows ({max} bytes)")
}

/// Answers a request that a rule of its route stops (see
/// [`crate::rules::Rules::check`]), counted with that route. An HTTP/1
/// connection whose request body is left unread is closed after it
/// (nginx closes after a 413 too).
#[cold]
fn ruled<B: Body>(
    req: &Request<B>,
    listener: &Listener,
    mut completion: Completion,
    verdict: Verdict,
) -> Response<ResponseBody> {
    let (status, text, extra) = match verdict {
        Verdict::Redirect { status, location } => (
            status,
            String::from_utf8_lossy(location.as_bytes()).into_owned(),
            Some((header::LOCATION, location)),
        ),
        Verdict::Forbidden => (
            StatusCode::FORBIDDEN,
            "this client's address may not use this".to_owned(),
            None,
        ),
        Verdict::Method(allow) => (
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed here", req.method()),
            Some((header::ALLOW, allow)),
        ),
        Verdict::TooLarge(max) => (StatusCode::PAYLOAD_TOO_LARGE, too_large(max), None),
        Verdict::NoHost => (
            StatusCode::BAD_REQUEST,
            "a redirect here needs the request's Host".to_owned(),
            None,
        ),
        Verdict::DotSegment => (
            StatusCode::BAD_REQUEST,
            "the path has a dot segment (. or ..) once its prefix is rewritten".to_owned(),
            None,
        ),
    };
    tracing::debug!(listener = %listener.config.name, status = status.as_u16(), "request stopped by a rule");
    completion.status = status.as_u16();
    // A redirect is no error: never an error page.
    let mut resp = if status.is_redirection() {
        message(status, &text, Some(completion))
    } else {
        own_message(listener, status, &text, completion)
    };
    if let Some((name, value)) = extra {
        resp.headers_mut().insert(name, value);
    }
    let body_left = !req.body().is_end_stream();
    if req.version() < Version::HTTP_2 && (body_left || status == StatusCode::PAYLOAD_TOO_LARGE) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// geolb's own answer, with the listener's `error_pages` body for
/// `status` when it has one (the status stays as it is).
fn own_message(
    listener: &Listener,
    status: StatusCode,
    text: &str,
    completion: Completion,
) -> Response<ResponseBody> {
    let Some(page) = listener.error_pages.get(status) else {
        return message(status, text, Some(completion));
    };
    let mut resp = Response::new(ResponseBody::message(page.body.clone(), Some(completion)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, page.content_type.clone());
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The key a hashing balancer places this request by; a request without
/// the configured header or cookie falls back to the client address.
/// `host`: the request's `Host` where its map does not hold it
/// (`upstream::Added::host`).
pub(super) fn request_key(
    on: &HashKey,
    client: IpAddr,
    headers: &HeaderMap,
    host: Option<&HeaderValue>,
) -> u64 {
    let by_client = || balance::client_ip_key(client);
    match on {
        HashKey::ClientIp => by_client(),
        HashKey::Header(name) => headers
            .get(name.as_str())
            .or_else(|| host.filter(|_| name == "host"))
            .map_or_else(by_client, |v| balance::hash_key(v.as_bytes())),
        HashKey::Cookie(name) => cookie(headers, name).map_or_else(by_client, balance::hash_key),
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A short plain-text answer of our own.
pub fn message(
    status: StatusCode,
    text: &str,
    completion: Option<Completion>,
) -> Response<ResponseBody> {
    let body = format!(
        "{} {}: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        text
    );
    let mut resp = Response::new(ResponseBody::message(Bytes::from(body), completion));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Copies both ways between an upgraded client and backend until both
/// close or nothing moves for `idle`.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade, active: ActiveGuard, idle: Duration) {
    let (client, backend) = match tokio::join!(client, backend) {
        (Ok(c), Ok(b)) => (c, b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let activity = Activity::new();
    let mut client = TrackedIo::new(TokioIo::new(client), activity.clone());
    let mut backend = TokioIo::new(backend);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel ended");
            }
        }
        reason = activity.watchdog(None, idle) => {
            tracing::debug!(reason, "tunnel cut");
        }
    }
    drop(active);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hyper's connection owns the stream it serves, and the future
    /// around it keeps no other copy: given by value, the stream stayed
    /// in the future as its argument (5,272 bytes over TLS in a release
    /// build, 4,064 since). Told apart by the stream's size: a TLS
    /// stream (1,224 bytes) in place of a socket must grow the future
    /// once by the difference, not twice.
    #[test]
    fn a_hyper_connection_keeps_its_stream_once() {
        use crate::tcp_io::TcpIo;
        use tokio_rustls::server::TlsStream;
        let grown = std::mem::size_of::<TlsStream<TcpIo>>() - std::mem::size_of::<TcpIo>();
        let over_tls = crate::proxy::returned_size(&serve_hyper::<TlsStream<TcpIo>>);
        let over_tcp = crate::proxy::returned_size(&serve_hyper::<TcpIo>);
        assert!(
            grown > 1_000,
            "a TLS stream is {grown} bytes more than a socket"
        );
        assert!(
            over_tls - over_tcp < 2 * grown,
            "serving TLS, hyper's future is {over_tls} bytes, {over_tcp} serving a socket: \
             does it keep the stream more than once?"
        );
    }

    /// A connection's timer, unset at first as `h1::requests` makes it:
    /// set for a request answered at once, it goes off early in the next,
    /// whose answer never comes; that one is waited for until its own
    /// deadline, no longer. Then an answer in time is taken, and a timer
    /// set past a deadline is brought back to it. In real time (deadlines
    /// are stamps of the machine's clock, which tokio's paused clock does
    /// not move); bounded, so that a wait nothing ends fails the test
    /// rather than hangs it.
    #[tokio::test]
    async fn an_answer_is_waited_for_until_its_own_deadline() {
        let ms = Duration::from_millis;
        let checks = async {
            let mut timer = std::pin::pin!(AnswerTimer::new(tokio::time::sleep(Duration::MAX)));
            let start = Stamp::now();
            let at_once = std::pin::pin!(async { "at once" });
            let first = before(timer.as_mut(), start.after(ms(100)), at_once);
            assert_eq!(first.await, Some("at once"));
            let due = start.after(ms(400));
            let never = std::pin::pin!(std::future::pending::<()>());
            assert_eq!(before(timer.as_mut(), due, never).await, None);
            let late = Stamp::now().since(due);
            assert!(Stamp::now() >= due && late < ms(250), "{late:?} late");
            let later = std::pin::pin!(tokio::time::sleep(ms(100)));
            let answer = std::pin::pin!(async {
                later.await;
                "answer"
            });
            let due = Stamp::now().after(ms(3_000));
            assert_eq!(before(timer.as_mut(), due, answer).await, Some("answer"));
            assert!(Stamp::now() < due);
            // The timer is now set three seconds on; this deadline is nearer.
            let due = Stamp::now().after(ms(200));
            let never = std::pin::pin!(std::future::pending::<()>());
            assert_eq!(before(timer.as_mut(), due, never).await, None);
            let late = Stamp::now().since(due);
            assert!(Stamp::now() >= due && late < ms(1_500), "{late:?} late");
        };
        tokio::time::timeout(Duration::from_secs(60), checks)
            .await
            .expect("every wait ends at its deadline");
    }

    /// A timer not polled again by the waker it holds is polled by a new
    /// one, which its firing then wakes; the one it held is not.
    #[tokio::test]
    async fn a_timer_wakes_the_waker_that_polled_it_last() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Wake, Waker};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (a, b) = (Arc::new(Count(0.into())), Arc::new(Count(0.into())));
        let (waker_a, waker_b) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let mut timer = std::pin::pin!(AnswerTimer::new(tokio::time::sleep(Duration::MAX)));
        let due = Stamp::now().after(Duration::from_millis(50));
        let never = std::pin::pin!(std::future::pending::<()>());
        let mut waiting = std::pin::pin!(before(timer.as_mut(), due, never));
        for waker in [&waker_a, &waker_a, &waker_b] {
            let polled = waiting.as_mut().poll(&mut Context::from_waker(waker));
            assert!(polled.is_pending());
        }
        let deadline = Stamp::now().after(Duration::from_secs(30));
        while b.0.load(Ordering::SeqCst) == 0 && Stamp::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(b.0.load(Ordering::SeqCst), 1, "the last waker is woken");
        assert_eq!(a.0.load(Ordering::SeqCst), 0, "the one it replaced is not");
        let polled = waiting.as_mut().poll(&mut Context::from_waker(&waker_b));
        assert_eq!(polled, Poll::Ready(None));
    }

    /// A target with an authority (HTTP/2's, or HTTP/1's absolute form)
    /// goes on in origin form, its path and query as they came, as the
    /// text parsed again would give them.
    #[test]
    fn targets_go_on_in_origin_form() {
        for (target, origin) in [
            ("http://a.example/x?y=1", "/x?y=1"),
            ("http://a.example", "/"),
            ("http://a.example/", "/"),
            ("https://a.example:8443/p/q/?", "/p/q/?"),
            (
                "http://a.example/%2e%2E/a%20b?c=%41#",
                "/%2e%2E/a%20b?c=%41",
            ),
            ("/already?x", "/already?x"),
        ] {
            let mut req = Request::builder()
                .uri(target)
                .version(Version::HTTP_2)
                .body(())
                .unwrap();
            let reparsed = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .parse::<Uri>()
                .unwrap();
            to_origin_form(&mut req, Some(HeaderValue::from_static("a.example")));
            assert_eq!(req.uri(), origin, "{target}");
            assert_eq!(req.uri(), &reparsed, "{target}");
            assert_eq!(req.uri().authority(), None, "{target}");
            assert_eq!(req.version(), Version::HTTP_11);
            let authority = Uri::try_from(target).unwrap().authority().is_some();
            assert_eq!(
                req.headers().contains_key(header::HOST),
                authority,
                "{target}"
            );
        }
    }

    #[test]
    fn host_names() {
        let h = |s: &'static str| host_name(&HeaderValue::from_static(s));
        assert_eq!(h("Example.COM:8080").as_deref(), Some("example.com"));
        assert_eq!(h("example.com").as_deref(), Some("example.com"));
        assert_eq!(h("[::1]:80").as_deref(), Some("::1"));
    }

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; session=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("other=2"));
        assert_eq!(cookie(&h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "other"), Some(&b"2"[..]));
        assert_eq!(cookie(&h, "sess"), None);
    }
}
