//! The load balancer's data path.
//!
//! `http` owns the L7 path (one hyper connection per client, one request
//! at a time through route, pick, forward); `tls` terminates HTTPS in
//! front of it; `tcp` owns the L4 path (pick, connect, copy both ways);
//! `body` streams responses and settles each request when its response
//! ends; `compress` compresses them on the way; `headers` rewrites at the
//! boundary; `activity` enforces the client-side header and idle timeouts; `stall` cuts HTTP/2 responses
//! the client's flow control holds up; `validate` finds what must not
//! be forwarded. Backend connections are opened and kept by
//! [`crate::upstream`], PROXY headers coded by
//! [`crate::proxy_protocol`], connections accepted by [`crate::accept`].

mod activity;
pub mod body;
mod compress;
/// For the fuzz targets and their corpus replay only.
#[doc(hidden)]
pub mod fuzz;
mod headers;
pub mod http;
mod stall;
pub mod tcp;
pub mod tls;
mod validate;
