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
