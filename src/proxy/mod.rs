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
//! `activity` enforces the client-side header and idle timeouts, `woken`
//! polls such side futures only when they woke; `stall`
//! cuts HTTP/2 responses
//! the client's flow control holds up; `validate` finds what must not
//! be forwarded; `client_cert` verifies client certificates and tells
//! backends about them. Backend connections are opened and kept by
//! [`crate::upstream`], PROXY headers coded by
//! [`crate::proxy_protocol`], connections accepted by [`crate::accept`].

mod activity;
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
pub mod ocsp;
pub mod pipes;
mod pump;
mod stall;
pub mod tcp;
pub mod tls;
mod validate;
mod woken;

use std::pin::Pin;

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
/// the answer's state is colder (README, "Writes after the turn's
/// reads"). With no other task queued the task is polled again at once
/// (tokio's `yield_now` would wait for the next look at the sockets).
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

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
