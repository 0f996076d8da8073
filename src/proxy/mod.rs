//! The load balancer's data path.
//!
//! `http` owns the L7 path (one hyper connection per client, one request
//! at a time through route, pick, forward); `h1` is geolb's own HTTP/1.x
//! server in front of it (`http1_server`), handing HTTP/2 and upgrades to
//! hyper; `tls` terminates HTTPS in
//! front of it, `ocsp` keeps its certificates' OCSP staples fresh; `tcp` owns the L4 path (pick, connect, copy both ways,
//! the copy in `pump`, splicing through `pipes`);
//! `body` streams responses and settles each request when its response
//! ends; `compress` compresses them on the way; `headers` rewrites at
//! the boundary and `header_rules` applies the configured header rules;
//! `activity` enforces the client-side header and idle timeouts, `linger`
//! reads on after an early answer before a connection closes, `woken`
//! polls such side futures only when they woke, `read_gate` a client's
//! socket only when it could have something; `stall`
//! cuts HTTP/2 responses
//! the client's flow control holds up; `validate` finds what must not
//! be forwarded; `client_cert` verifies client certificates and tells
//! backends about them. Backend connections are opened and kept by
//! [`crate::upstream`], PROXY headers coded by
//! [`crate::proxy_protocol`], connections accepted by [`crate::accept`].

mod activity;
mod answer_timer;
pub mod body;
pub mod client_cert;
mod compress;
/// For the fuzz targets and their corpus replay only.
#[doc(hidden)]
pub mod fuzz;
mod h1;
mod halves;
mod header_rules;
mod headers;
pub mod http;
mod linger;
pub mod ocsp;
pub mod pipes;
mod pump;
mod read_gate;
mod stall;
pub mod tcp;
pub mod tls;
mod validate;
mod woken;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The future `make` returns, in a box of its own, built in that box.
/// `Box::pin(make())` builds the future on the stack and then copies all
/// of it into the box, the room of the states it has not entered yet
/// included: 2.5 KB for a request's routing and forwarding, to set the
/// few hundred bytes its arguments take. Given the box first, the
/// optimizer writes the arguments straight into it (seen in the assembly:
/// no `memcpy` is left), and the rest of the box is first written when
/// the future gets there.
#[inline(always)]
fn boxed_in_place<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Asks the CPU for all of `value`'s memory at once, ahead of its use,
/// when so many connections are open that it has likely gone cold (see
/// [`MANY_CONNECTIONS`]): read in the order of the code, each line would
/// be a miss waited for after the one before (the state machines of
/// nested futures are read level by level), where fetched together
/// their waits overlap.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn prefetch<T: ?Sized>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    if OPEN.load(Ordering::Relaxed) > MANY_CONNECTIONS {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = (value as *const T).cast::<i8>();
        let mut at = 0;
        while at < std::mem::size_of_val(value) {
            // SAFETY: SSE is in every x86_64 CPU, and a prefetch is a
            // hint: it reads nothing into the program and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(at)) };
            at += 64;
        }
    }
}

/// HTTP and HTTPS listeners' connections open, counted by [`prefetched`].
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Above this many connections, their states no longer stay in a core's
/// cache between two of a connection's requests, and [`prefetch`]
/// fetches them: each connection's future, its request's box (2.5 KB
/// alone) and its buffers take 4 KB or more, and a core has 1 MiB of L2
/// on the machines measured.
/// Below it the fetches only cost instructions: done with 8 connections,
/// 362 a request (`benches/instructions.sh`). Counted for the whole
/// process: with several worker threads each core holds a share of the
/// connections, and some of the fetches above it find their lines there.
const MANY_CONNECTIONS: usize = 256;

pin_project_lite::pin_project! {
    /// A connection's future, its memory fetched whole each time it is
    /// polled (see [`prefetch`]), counted among those open meanwhile.
    /// A struct, not an async fn around it: that kept the future twice
    /// in the task (the argument and the pinned local), 4 KB more a
    /// connection.
    pub(crate) struct Prefetched<F> {
        #[pin]
        future: F,
        open: Open,
    }
}

pub(crate) fn prefetched<F>(future: F) -> Prefetched<F> {
    counted(&OPEN, future)
}

fn counted<F>(open: &'static AtomicUsize, future: F) -> Prefetched<F> {
    open.fetch_add(1, Ordering::Relaxed);
    Prefetched {
        future,
        open: Open(open),
    }
}

/// One of the connections counted in its counter, until dropped.
struct Open(&'static AtomicUsize);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<F: std::future::Future> std::future::Future for Prefetched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        prefetch(&*this.future);
        this.future.poll(cx)
    }
}

/// Pending once, having woken itself: the task goes to the back of the
/// runtime's queue, behind every task the same turn of the event loop
/// woke, and goes on when they have run. Before an answer's write, this
/// makes a turn's writes go out together, after its reads, as HAProxy's
/// loop does, and not one between each two reads: a process at the other
/// end on the same machine (a local backend, a load generator) that sleeps
/// between messages is then woken once for many, where each wake-up of
/// an idle CPU costs the writer an interrupt to it. With 1,000 clients
/// that was 0.375 interrupts a request and 0.208 with this, 25.8 against
/// 22.0 µs of kernel time a request, for 2.3 µs more of user time, as
/// the answer's state is colder (docs/performance-journal.md, "Writes
/// after the turn's reads"). With no other task queued the task is polled
/// again at once (tokio's `yield_now` would wait for the next look at the
/// sockets).
pub(crate) async fn after_woken_tasks() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// The size of what `f` returns (a connection's future), without
/// calling it.
#[cfg(test)]
pub(crate) fn returned_size<F, A, B, C, D, E, R>(_: &F) -> usize
where
    F: Fn(A, B, C, D, E) -> R,
{
    std::mem::size_of::<R>()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn a_connection_is_counted_while_open_however_it_ends() {
        static OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let count = || OPEN.load(std::sync::atomic::Ordering::Relaxed);
        rt.block_on(async {
            let (ended, end) = tokio::sync::oneshot::channel::<()>();
            let served = tokio::spawn(super::counted(&OPEN, end));
            let cut = tokio::spawn(super::counted(&OPEN, std::future::pending::<()>()));
            while count() < 2 {
                tokio::task::yield_now().await;
            }
            // One ends, one is cut (its task dropped unfinished).
            ended.send(()).expect("still waiting");
            served.await.expect("served").expect("sent");
            assert_eq!(count(), 1);
            cut.abort();
            let _ = cut.await;
            assert_eq!(count(), 0);
        });
    }

    #[test]
    fn a_write_waits_for_the_reads_of_the_tasks_woken_with_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        let order = Rc::new(RefCell::new(Vec::new()));
        for name in ["a", "b"] {
            let order = order.clone();
            local.spawn_local(async move {
                order.borrow_mut().push(format!("{name} read"));
                super::after_woken_tasks().await;
                order.borrow_mut().push(format!("{name} write"));
            });
        }
        rt.block_on(local);
        assert_eq!(*order.borrow(), ["a read", "b read", "a write", "b write"]);
    }
}
